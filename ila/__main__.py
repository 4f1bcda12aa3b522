import sys

from ila.cli import main

sys.exit(main())
