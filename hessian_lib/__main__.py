import sys

from hessian_lib.cli import main

sys.exit(main())
