"""`serve run graph:app` and `import_path: graph:build_app` from a checkout, as before.

The graph is wired in `vision_serve/graph.py`; this module *is* that one (the same module object,
so attributes, patches and `app` are shared). It is not installed: pip installs
`vision_serve.graph`, whose name no other project's top-level module can take.
"""

import sys

import vision_serve.graph

sys.modules[__name__] = vision_serve.graph
