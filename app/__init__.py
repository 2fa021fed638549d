"""segeig web demo (Gradio). Start it with ``segeig demo``; see docs/demo.md.

``app.logic`` holds the framework-free logic, ``app.app`` the Gradio wiring
(``build_demo``, ``serve``), ``app.startup`` the choice (or fit) of the
checkpoint to serve.
"""
