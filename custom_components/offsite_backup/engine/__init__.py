"""The engine: the gateway's protocol and everything that runs without Home Assistant.

Plain asyncio + aiohttp. It is given, never takes: an ``aiohttp.ClientSession`` (Home Assistant's shared one, or
the tests' and the benchmark's own), the gateway's URL and token, the stream to send (``open_stream``), a clock,
and callbacks for what the integration shows or keeps (``progress``, ``on_state``, ``on_wait``). It answers with
typed data classes and raises ``GatewayError`` or ``UploadError`` subclasses, worded for people.

===================  ==========================================================================================
``api``              the typed client of the gateway's API v1 (its errors in ``api_errors``, its answers in
                     ``api_answers``)
``uploader``         the chunked, retried, resumable multipart upload (``upload_model``, ``upload_reader``,
                     ``upload_sender``, ``upload_retry`` and ``upload_errors`` are its pieces)
``left_behind``      an upload the gateway still holds in progress (409 ``upload_in_progress``) aborted and the
                     upload tried again; an interrupted upload aborted
``drill``            the restore drill's checks on a downloaded stream, and when a drill is due
``schedule``         when tonight's backup runs (a jittered daily window)
``privacy``          what of a backup's description the gateway gets to see
``outside_alerts``   the house's notify URL kept on the gateway
===================  ==========================================================================================

The rule, enforced by import-linter (``[tool.importlinter]`` in pyproject.toml, run by ``scripts/test``): nothing
here imports Home Assistant or the rest of the integration, and ``tests/engine/test_isolation.py`` imports every
module of it with Home Assistant absent. Nothing is imported here: importing the package costs nothing.
"""
