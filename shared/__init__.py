"""SplatBridge code shared by the Blender add-on and the backend.

Pure Python + numpy (+ msgpack/pyzmq for the wire): it runs inside Blender's
Python. Modules import each other relatively so the package can be vendored
into the add-on under any name.
"""
