"""twistd -y serialproxy.tac: the same node as ``twistd serialproxy``.

The configuration file is taken from $SERIALPROXY_CONFIG (default:
serialproxy.ini in the working directory, if it exists).
"""

import os

from twisted.application import service

from serialproxy.tap import Options, makeService

_options = Options()
_path = os.environ.get("SERIALPROXY_CONFIG") or ("serialproxy.ini" if os.path.exists("serialproxy.ini") else None)
_options.parseOptions(["--config", _path] if _path else [])

application = service.Application("serialproxy")
makeService(_options).setServiceParent(application)
