"""uds: distributed job execution over content-addressed storage.

The roles are subpackages: `uds.client` (the library and the `uds` command),
`uds.master`, `uds.loadbalancer`, `uds.storage`, `uds.worker` (each runs as
`python -m uds.ROLE`) and `uds.wire` (the protocol). In the source tree they
are the top-level folders of the same names; setup.cfg maps them here.
"""
from pkgutil import extend_path

# Run from a source checkout with the package installed (not editable), this
# folder shadows the installed one; extending the path finds the roles there.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
