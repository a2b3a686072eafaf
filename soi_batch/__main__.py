import sys

from soi_batch.cli import main

sys.exit(main())
