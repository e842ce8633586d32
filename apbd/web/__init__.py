"""apbd-web: the HTTP side of apbd, serving the APB server API from the spool."""
