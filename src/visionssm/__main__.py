import sys

from visionssm.cli import main

sys.exit(main())
