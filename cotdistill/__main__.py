import sys

from cotdistill.cli import main

sys.exit(main())
