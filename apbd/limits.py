"""Limits, timeouts and defaults, each with the value the APB server API gives.

Every number a user can meet through the API lives here, so that the web layer,
the runner and the docs agree on one value.
"""

# Build timeout of a whole build, in seconds: default and the accepted range.
BUILD_TIMEOUT_DEFAULT_S = 7200
BUILD_TIMEOUT_MIN_S = 300
BUILD_TIMEOUT_MAX_S = 14400

# Output timeout (apb_output_timeout in the PKGBUILD): a build that prints
# nothing for this long is stopped. Values outside the range are ignored.
OUTPUT_TIMEOUT_DEFAULT_S = 1800
OUTPUT_TIMEOUT_MIN_S = 60
OUTPUT_TIMEOUT_MAX_S = 86400

# Grace between SIGTERM and SIGKILL when a build is stopped, in seconds.
KILL_GRACE_S = 10
# The same grace while the build is recreating the buildroot.
KILL_GRACE_BUILDROOT_S = 300

# Upload limits, in bytes.
MAX_FILE_SIZE_DEFAULT = 100 * 1024 * 1024
MAX_REQUEST_SIZE_DEFAULT = 500 * 1024 * 1024

# Limits on what an uploaded tarball may expand to.
MAX_EXTRACTED_SIZE_DEFAULT = 4 * 1024 * 1024 * 1024
MAX_TAR_MEMBERS_DEFAULT = 20000

# Request timeouts, in seconds: uploads, and every other non-streaming request.
SUBMIT_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 30

# Server-sent events: seconds between heartbeats.
SSE_HEARTBEAT_S = 30

# GET /build/{id}/output paging.
OUTPUT_LIMIT_DEFAULT = 50
OUTPUT_LIMIT_MAX = 1000

# History endpoints.
LATEST_LIMIT_DEFAULT = 10
LATEST_LIMIT_MAX = 100
PKGNAME_LIMIT_DEFAULT = 5
PKGNAME_LIMIT_MAX = 50

# Concurrent builds.
MAX_CONCURRENT_DEFAULT = 3

# Build folders older than this are removed by cleanup, in seconds (7 days).
CLEANUP_MAX_AGE_S = 7 * 24 * 3600

# Resource thresholds, in percent, that trigger cleanup.
MEMORY_CLEANUP_PERCENT = 90.0
DISK_CLEANUP_PERCENT = 95.0

# Resource monitor period, in seconds.
MONITOR_INTERVAL_S = 30

# SRCDEST lock wait before the build goes on without the lock, in seconds.
SRCDEST_LOCK_TIMEOUT_S = 600

# Runner: seconds between full rescans of the spool, the safety net for
# missed inotify events.
RESCAN_INTERVAL_S = 5.0
# Runner: seconds between heartbeat file updates.
HEARTBEAT_INTERVAL_S = 2.0
