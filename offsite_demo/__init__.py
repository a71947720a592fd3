"""The newcomer demo's pieces: `scripts/demo.py` tells the story with them, and the end-to-end tests reuse them.

- `console`: the demo's console lines, its error with a remedy, and the checks it prints;
- `settings`: its ports, names and constants; `files`: its directory and Home Assistant's configuration;
- `processes`: the processes it starts (each in its own process group, stopped by pid) and waiting for them;
- `launch`: starting SeaweedFS, the gateway (with its CLI) and Home Assistant;
- `homeassistant`: a client of Home Assistant's REST and websocket APIs (onboarding, login, tokens, commands);
- `configure`: onboarding, the backup key and the integration added through Home Assistant's APIs;
- `backup` and `checks`: the backup through the action, and what the demo checks of it and of Home Assistant.

`Demo` (in `state`) holds what the steps share. None of this is shipped: the gateway's package is `offsite_gateway`.
"""
