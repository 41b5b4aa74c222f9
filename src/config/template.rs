//! The commented `ferry.toml` that `ferry init` writes; `ferry check` must accept it.

/// A starting config; `repo = "."` expects it to be written inside the app's repository.
pub const TEMPLATE: &str = r#"# ferry.toml: how ferry builds, runs and promotes this app.
# Durations are written like "500ms", "30s", "5m". Relative paths are relative to this file.

# Where ferry keeps its database, git mirror, releases, shared data and logs.
state_dir = ".ferry"

[app]
name = "my-app"                 # required
repo = "."                      # required: a local path or any URL git can clone
build = []                      # run in the release directory, in order, e.g. ["make"]
test = []                       # the gate: a failing command stops the deploy
start = "./server --port $PORT" # required: runs one instance; ferry sets $PORT
shared = []                     # live outside releases and linked in, e.g. ["data/", "config/.env"]
keep_releases = 5               # built releases kept per environment
keep_backups = 5                # deploys whose data backups are kept (default: keep_releases)
command_timeout = "10m"         # limit for each build or test command
stop_timeout = "10s"            # SIGTERM, then SIGKILL after this long
drain_timeout = "30s"           # requests in flight on the old instance get this long to finish
pass_env = []                   # ferry's variables that commands inherit besides PATH and the
                                # locale, e.g. ["HTTP_PROXY"]; everything else is cleared
# release = "python -m app.migrate"  # once per deploy, in the new release, as an instance runs
                                # (its user, variables, env and env_file; its image with
                                # containers), after backup and before start; a failure stops
                                # the deploy, the old release serving. Rollbacks skip it
                                # unless `ferry rollback --run-release`
# release_timeout = "10m"       # default: command_timeout
# runtime = "process"           # or "docker" (an image from the Dockerfile at the release
                                # commit) or "compose" (a service of a compose file)
# [app.docker]                  # container settings, for "docker" and "compose"
# dockerfile = "Dockerfile"     # docker only, relative to the release; context = "."
# shared_at = "/shared"         # the environment's shared dir, mounted here
# secrets_at = "/run/secrets/ferry.env" # env_file, mounted read-only ($FERRY_ENV_FILE)
# network = "host"              # the app binds 127.0.0.1:$PORT; "publish": $PORT on 127.0.0.1
# user = "environment"          # the environment's user; "image": the image's USER
# [app.compose]                 # runtime "compose": its other services are accessories
# file = "docker-compose.yml"
# service = "web"               # the service the proxy routes to

# [processes]                   # process types beside web, run per release, never routed
# web = "./server --port $PORT" # instead of [app] start (not both): what the proxy routes to
# worker = "./worker"           # one instance, started once web is healthy
# scheduler = { command = "./cron", count = 1, stop_timeout = "30s" }  # count 0..64 (0: not
                                # run); stop_timeout defaults to [app] stop_timeout

[health]
paths = ["/"]                   # every path must answer expect_status
expect_status = 200
startup_delay = "0s"            # wait before the first probe
interval = "1s"
timeout = "5s"
retries = 30
watch_interval = "10s"          # `serve` probes what each environment serves this often ("0s": off)

[environments.staging]
listen = "127.0.0.1:8081"       # a port of its own; ferry's proxy owns it (optional with hosts)
# hosts = ["staging.example.com", "*.preview.example.com"]  # served on [server] http/https
                                # by Host/SNI; exact names before wildcards (one label)
# path_prefix = "/api"          # only paths under it on those hosts (longest prefix wins);
                                # stripped, the app gets X-Forwarded-Prefix: /api
# tls = { cert = "certs/staging.pem", key = "certs/staging.key" }  # PEM files, reloaded
                                # when they change; or tls = "acme" (see [acme]; no wildcards)
# redirect_https = true         # plain HTTP gets 308 to https (default: on with tls)
# preview_listen = "127.0.0.1:8181"  # reaches a deploy's new instance from its health checks
                                # until the switch (503 otherwise); `ferry status` shows it
# preview_hosts = ["preview.staging.example.com"]  # the same on the front door ([server] http)
slots = 1                       # 2 makes staging-1 on 8081 and staging-2 on 8082
track = { branch = "main" }     # webhook pushes to main deploy here; or { tags = true }
env = { LOG_LEVEL = "debug" }
# env_file = "config/.env"      # secrets, read from the environment's shared dir at start
                                # (`ferry secrets staging set NAME` writes it)
# secrets = { DATABASE_URL = { command = "op read op://staging/db/url" } }
                                # a command's stdout (one trailing newline trimmed), run at
                                # each start as ferry's user with serve's environment, in
                                # this file's dir; timeout = "30s" by default
# user = "app-staging"          # as root, build/test/app commands run as this user (default:
                                # ferry-<app>-<env>, created on first start); never root,
                                # never another environment's

[environments.production]
listen = "127.0.0.1:8080"
track = { tags = true }         # release tags only: vMAJOR.MINOR.PATCH; add auto = true
                                # to deploy tags pushed through a webhook (gates still apply)
# prerelease = false            # true also takes v1.2.0-rc.1
requires = "staging"            # a tag must be deployed and `ferry verify`-ed there first
approval = false                # true: deploys wait for `ferry approve <id>`;
                                # { not_by_deployer = true }: by another token and person
approval_timeout = "24h"        # ... and are refused after this long
freeze = []                     # e.g. ["Fri 17:00 - Mon 09:00", "2026-12-24 - 2026-12-27"]
# timezone = "Europe/Berlin"    # freeze windows are in local time unless set
require_checks = []             # CI checks that must pass for the commit, e.g. ["ci"]
backup = []                     # files in the shared dir snapshotted before each deploy,
                                # e.g. ["data/production.db"] (SQLite: online backup API)
env = { LOG_LEVEL = "info" }
# confirm = "ROLLBACK"          # `ferry rollback` and the dashboard ask for this word typed
                                # (default: the environment's name); --yes skips asking
# access_log = false            # true: a JSON line per request in logs/access.log (rotated)
# rollout = ["10%", "wait 2m", "50%", "wait 2m", "100%"]
                                # a canary: that share of clients on the new release, judged
                                # at every step; "pause" waits for `ferry rollout <env> promote`
# inconclusive_timeout = "10m"  # too little traffic to judge this long past a wait: paused
# sticky_header = "X-User-Id"   # split by this header's value (default: a ferry_canary_<env> cookie)
# traffic_metrics = true        # the proxy counts requests, errors and latency per instance
                                # (/metrics, the dashboard, the traffic rules of [monitor])
# servers = ["deploy@app1.example.com", "app2.example.com:2222"]  # run on these hosts over
                                # SSH (see [ssh]), not this machine: [user@]host[:port], IPv6
                                # as "[2001:db8::1]:22"; `listen` is then where each host's
                                # proxy listens. Not yet with rollout, [[check]], preview_*,
                                # hosts, backup, slots, [processes] workers or containers
                                # (docs/servers.md)
# max_parallel = 1              # with servers: hosts switched at a time

# After the switch the new release is watched; the previous one is kept running (out of
# traffic) until this ends, and a breach switches back to it at once. `ferry deploy` shows
# each probe and returns when monitoring ends (Ctrl-C stops following, not the deploy).
# An environment's first deploy has nothing to roll back to: it is watched all the same,
# and a breach leaves it serving (the deploy is marked failed). Set `monitor = false` on an
# environment to skip this there, or shorten `duration` while trying ferry out.
[monitor]
duration = "5m"
interval = "30s"
max_consecutive_failures = 3
min_success_rate = 0.95         # over all probes so far (judged from the 10th probe on)
max_response_time = "10s"
max_error_lines = 5             # lines matching error_pattern in the app's output ...
error_window = "1m"             # ... within this long
error_pattern = "ERROR|CRITICAL|Traceback"
# Traffic rules, judged 4 times a second from what the proxy saw the new release answer over the
# last `window` (none set: none judged). Errors are the app's 5xx and the 502/503/504 ferry
# answered because the instance failed, was busy or too slow; p99 is the time to the app's
# response head. Below min_requests they are inconclusive, never a breach.
# max_error_rate = 0.01           # errors over requests
# max_p99 = "800ms"
# max_error_rate_increase = 0.01  # over the previous release's rate in the window before
#                                 # the switch (0.01: one point more)
# min_requests = 50
# window = "1m"                   # up to 5m

# Checks before traffic: run against a deploy's new instance after its health checks, before
# the switch (step `check`); every check runs, and any failure fails the deploy (the new
# instance is stopped, the old one never stopped serving). For every environment unless
# `environments` names some. An HTTP request straight to the instance:
# [[check]]
# name = "status API"           # default: method and path (or the command)
# path = "/api/status"
# method = "GET"                # default GET
# expect_status = 200           # default 200 (200-599; a redirect is the answer, never followed)
# json_pointer = "/db/ok"       # with expect: the JSON body's value there (RFC 6901) ...
# expect = true                 # ... must equal this (numbers by value)
# timeout = "10s"               # default 10s; a command's: command_timeout
# environments = ["staging"]    # default: every environment
# Or a command, run like a hook (see [hooks]) with URL=http://127.0.0.1:<the instance's port>:
# [[check]]
# command = "./scripts/smoke.sh"

# Hooks: commands run on this host in the release dir, as the environment's user, with
# FERRY_APP, FERRY_ENVIRONMENT, FERRY_VERSION, FERRY_COMMIT, FERRY_PREVIOUS_VERSION,
# FERRY_DEPLOYMENT, FERRY_TRIGGERED_BY, FERRY_DURATION (and FERRY_OUTCOME, FERRY_REASON);
# each a command or a list, each command limited by command_timeout.
# [hooks]
# pre_deploy = "./scripts/check"      # after test, before backup: a failure refuses the deploy
# post_deploy = ["./scripts/announce"] # after a deploy succeeded (a failure is recorded only)
# on_failure = "./scripts/page"       # after a deploy or rollback failed (not a refused one)
# on_rollback = "./scripts/announce"  # after a monitor switch-back or a rollback
# secrets = false                     # true: hooks also get the environment's env and env_file

[server]
listen = "127.0.0.1:7070"       # ferry's API, webhooks and metrics; every call needs a token
                                # (ferry token create); the CLI here uses the local one
# http = "0.0.0.0:80"           # the front door: environments' `hosts` on one pair of ports
# https = "0.0.0.0:443"         # (HTTP/2 and HTTP/1.1; unknown hosts get 404)
# hosts = ["ferry.example.com"] # other names ferry is reached by (the Host header; webhooks
                                # too): requests naming anything else get 421
# open_reads = false            # true: reads need no token from a loopback peer
# Connections: the API and each environment's proxy have budgets of their own. At a limit the
# oldest idle connection is closed to make room (or, all busy, the new one gets 503).
# max_connections = 512           # open at once
# max_connections_per_client = 128  # from one address (IPv6: one /64)
# header_timeout = "10s"          # to send a request header, also after each response
# max_streams = 64                # /api/events streams and followed logs open at once
# stop_apps_on_exit = false       # true: stopping serve stops the apps (as `serve --stop-apps`);
                                  # by default they keep serving and the next serve adopts them

# Each environment's proxy (the same keys; defaults shown). Behind a load balancer every
# request comes from its address: raise max_connections_per_client to max_connections.
# [proxy]
# max_connections = 2048
# max_connections_per_client = 256
# header_timeout = "10s"
# upstream_timeout = "60s"        # the app must start answering by then: 504 (502: refused)
# max_request_body = "100MB"      # 413 beyond; 0: no limit
# max_response_body = 0           # a response is cut beyond; 0: no limit
# max_request_headers = "32KB"    # request line and headers together: 431 beyond
# upstream_keepalive = 32         # idle connections kept to each instance (more: closed after 1s idle)
# upstream_idle_timeout = "60s"   # an idle one is closed after this long
# upstream_max_connections = 256  # open to one instance at once; more requests wait ...
# upstream_queue_timeout = "10s"  # ... this long for one, then get 503 with Retry-After

# Webhooks: name the environment variables holding the shared secrets (never the secrets).
# GitHub: POST /hooks/github (either content type); GitLab: POST /hooks/gitlab.
# Only pushes of `repository` act; it defaults to the path of a remote [app] repo URL.
# [webhooks]
# github_secret_env = "FERRY_GITHUB_SECRET"
# gitlab_token_env = "FERRY_GITLAB_TOKEN"
# repository = "acme/shop"
# wait_lock = "10m"             # pushes wait this long behind a `ferry lock` (default: refused)

# Notifications (see docs/notifications.md): kind "webhook" (ferry's JSON, the default),
# "slack", "discord", "teams", "github-issue", "gitlab-issue" or "email". Events:
# deploy.started, deploy.succeeded, deploy.failed, deploy.refused, rolled_back,
# approval.waiting, maintenance.on, maintenance.off. Left out: every event for webhook and
# chat kinds; failures, rollbacks and successes for issue trackers; failures and rollbacks
# for email.
# [[notify]]
# name = "team-chat"
# kind = "slack"
# url_env = "FERRY_SLACK_URL"   # the variable holding the webhook URL (or url = "https://…")
# events = ["deploy.succeeded", "deploy.failed", "rolled_back", "approval.waiting"]

# How ferry reaches environments' `servers`: the system's OpenSSH client, never a prompt,
# host keys checked against known_hosts (an unknown or changed key is refused, never learned).
# [ssh]
# user = "deploy"               # for servers without user@ (default: ferry's user)
# port = 22                     # for servers without :port
# identity_file = "/etc/ferry/id_ed25519"  # default: ssh's keys and agent
# known_hosts = "/etc/ferry/known_hosts"   # default: ~/.ssh/known_hosts of ferry's user
# proxy_jump = "bastion.example.com"       # one jump host, checked like the servers
# connect_timeout = "10s"
# agent_dir = ".ferry"          # on each host: ferry's agent, releases and state (relative to
                                # the user's home, or absolute)
# command = "ssh"               # the OpenSSH client to run

# Certificates from ACME for environments with tls = "acme": ordered at the first start (one per
# environment, for its hosts), renewed ahead of expiry, kept in the state dir (acme/, mode 0600).
# The CA checks http://HOST/.well-known/acme-challenge/... on [server] http: port 80 must reach
# ferry. Failures are retried (10s, doubling, up to check_interval) and shown by `ferry status`.
# [acme]
# email = "ops@example.com"       # required: the account's contact address
# directory = "https://acme-v02.api.letsencrypt.org/directory"  # the default: Let's Encrypt
# ca = "root.pem"                 # a PEM root trusted (alone) for the directory's HTTPS:
                                  # a private or test ACME server
# renew_before = "30d"            # renewed once it expires within this long
# check_interval = "12h"          # expiry dates are looked at this often
"#;
