import sys

from nestgen.cli import main

sys.exit(main())
