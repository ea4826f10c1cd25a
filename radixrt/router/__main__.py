import sys

from radixrt.router.server import main

sys.exit(main())
