"""Print $PATH without the directories that hold the named programs (used by the Makefile)."""

import os
import shutil
import sys

hidden = {os.path.dirname(p) for name in sys.argv[1:] if (p := shutil.which(name))}
path = os.environ.get("PATH", "").split(os.pathsep)
print(
    os.pathsep.join(
        d for d in path if d and os.path.normpath(d) not in {os.path.normpath(h) for h in hidden}
    )
)
