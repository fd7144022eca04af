"""A local Discord for voice bots: REST, the main gateway (v10) and a voice node in one
process, with simulated users. The entry point is ``voxgate.sandbox.app.Sandbox``.

Deliberately empty of imports: ``python -m voxgate.sandbox.launch_dpy`` must set
``SSL_CERT_FILE`` before anything imports aiohttp (which reads it at import time).
"""
