//! What a compose file from a release may ask of the (root-equivalent) docker daemon.
//!
//! The file is repository content a committer of any environment controls, so it must gain
//! nothing over what ferry gives an app: no host paths but the environment's own dirs, no
//! privileges, no other container's namespaces, volumes or networks, no port on a public address.
//! Keys are checked against an allowlist: a key not named here is refused, so a key compose adds
//! later is refused until someone looks at it.
//!
//! Two readings are vetted: the file as written ([`source_problems`]: `env_file`, `extends` and
//! `include`, which `config` resolves away, reading host files as root) and compose's resolved
//! `config` output ([`config_problems`]: relative paths made absolute against the project dir).

use std::path::{Component, Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// Service keys that take no host resources whatever their value.
const SERVICE_KEYS: &[&str] = &[
    "annotations",
    "attach",
    "command",
    "configs",
    "cap_drop",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_shares",
    "cpus",
    "cpuset",
    "depends_on",
    "deploy",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "environment",
    "expose",
    "extra_hosts",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "networks",
    "oom_score_adj",
    "pids_limit",
    "platform",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "scale",
    "secrets",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "working_dir",
];

/// Why some well-known keys are refused (others get "not on ferry's allowlist").
fn refusal(key: &str) -> &'static str {
    match key {
        "privileged" => "a privileged container is root on the host",
        "cap_add" => "added capabilities widen what the container may do to the host",
        "devices" | "device_cgroup_rules" | "gpus" => "host devices are not given to containers",
        "volumes_from" => "it mounts another container's volumes",
        "external_links" => "it reaches containers outside the project",
        "container_name" => {
            "a fixed container name leaves the project's namespace (and may clash with another environment's)"
        }
        "cgroup_parent" | "cgroup" => "the container's cgroup is docker's to choose",
        "sysctls" => "kernel parameters are not set from a release",
        "runtime" | "isolation" | "storage_opt" => "the container runtime is ferry's to choose",
        "label_file" | "env_file" => "it reads files on the host",
        "extends" => "it reads another file",
        _ => "not on ferry's allowlist of compose keys",
    }
}

/// Problems of the file as written: `env_file` (read by compose as root, inlined by `config`)
/// outside `allowed`, `extends` of another file, `include`. Relative paths are resolved against
/// `directory` (the project dir). Every mapping is walked, so anchors and `x-` keys are seen too.
pub(super) fn source_problems(text: &str, directory: &Path, allowed: &[PathBuf]) -> Vec<String> {
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("ferry cannot read the file as YAML: {e}")],
    };
    let mut problems = Vec::new();
    for doc in &docs {
        if !doc["include"].is_badvalue() {
            problems.push("`include`: other files are not included (one file per app)".into());
        }
        if let Some(services) = doc["services"].as_hash() {
            for (name, body) in services {
                let service = text_of(name).unwrap_or_else(|| "?".into());
                walk_source(body, &service, directory, allowed, &mut problems);
            }
        }
        // anchors defined elsewhere (`x-...`) are copied where they are used, seen above
    }
    problems
}

fn walk_source(
    node: &Yaml,
    service: &str,
    directory: &Path,
    allowed: &[PathBuf],
    problems: &mut Vec<String>,
) {
    match node {
        Yaml::Hash(map) => {
            for (key, value) in map {
                match key.as_str() {
                    Some("env_file") => {
                        for path in env_files(value) {
                            if let Err(why) = host_path_inside(&path, directory, allowed) {
                                problems.push(format!(
                                    "service `{service}`: `env_file: {path}`: {why}"
                                ));
                            }
                        }
                    }
                    Some("extends") if !value["file"].is_badvalue() => problems.push(format!(
                        "service `{service}`: `extends` with `file`: only services of the same file may be extended"
                    )),
                    Some("label_file") => problems.push(format!(
                        "service `{service}`: `label_file`: {}",
                        refusal("label_file")
                    )),
                    _ => walk_source(value, service, directory, allowed, problems),
                }
            }
        }
        Yaml::Array(items) => {
            for item in items {
                walk_source(item, service, directory, allowed, problems);
            }
        }
        _ => {}
    }
}

fn env_files(value: &Yaml) -> Vec<String> {
    match value {
        Yaml::Array(items) => items.iter().flat_map(env_files).collect(),
        Yaml::Hash(_) => text_of(&value["path"]).into_iter().collect(),
        other => text_of(other).into_iter().collect(),
    }
}

/// Problems of compose's resolved `config` output of project `project` (its sanitized name):
/// every key of every service, volume, network, secret and config checked.
pub(super) fn config_problems(text: &str, project: &str, allowed: &[PathBuf]) -> Vec<String> {
    let docs = match YamlLoader::load_from_str(text) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("compose's `config` output is not YAML: {e}")],
    };
    let Some(doc) = docs.first() else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    if let Some(top) = doc.as_hash() {
        for key in top.keys().filter_map(Yaml::as_str) {
            if ![
                "version", "name", "services", "volumes", "networks", "secrets", "configs",
            ]
            .contains(&key)
                && !key.starts_with("x-")
            {
                problems.push(format!("top-level `{key}`: {}", refusal(key)));
            }
        }
    }
    if let Some(services) = doc["services"].as_hash() {
        for (name, body) in services {
            let service = text_of(name).unwrap_or_else(|| "?".into());
            service_problems(&service, body, allowed, &mut problems);
        }
    }
    top_level_problems(doc, project, allowed, &mut problems);
    problems
}

fn service_problems(service: &str, body: &Yaml, allowed: &[PathBuf], problems: &mut Vec<String>) {
    let Some(map) = body.as_hash() else {
        return;
    };
    let mut refuse =
        |key: &str, why: String| problems.push(format!("service `{service}`: {key}: {why}"));
    for (key, value) in map {
        let Some(key) = key.as_str() else { continue };
        match key {
            "deploy" if !value["resources"]["reservations"]["devices"].is_badvalue() => refuse(
                "`deploy.resources.reservations.devices`",
                refusal("devices").into(),
            ),
            k if SERVICE_KEYS.contains(&k) => {}
            "privileged" if !truthy(value) => {}
            "build" => {
                for why in build_problems(value, allowed) {
                    refuse("`build`", why);
                }
            }
            "volumes" => {
                for why in value
                    .as_vec()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| volume_problem(v, allowed))
                {
                    refuse("`volumes`", why);
                }
            }
            "ports" => {
                for why in value
                    .as_vec()
                    .into_iter()
                    .flatten()
                    .filter_map(port_problem)
                {
                    refuse("`ports`", why);
                }
            }
            "env_file" => {
                for path in env_files(value) {
                    if let Err(why) = host_path_inside(&path, Path::new("/"), allowed) {
                        refuse(&format!("`env_file: {path}`"), why);
                    }
                }
            }
            "network_mode" => {
                let mode = text_of(value).unwrap_or_default();
                if !(["host", "none", "bridge", "default"].contains(&mode.as_str())
                    || mode.starts_with("service:"))
                {
                    refuse(
                        &format!("`network_mode: {mode}`"),
                        "only host, none, bridge or service:<a service of the file>".into(),
                    );
                }
            }
            "pid" | "ipc" | "uts" | "userns_mode" => {
                let mode = text_of(value).unwrap_or_default();
                if !(["private", "shareable", "none", ""].contains(&mode.as_str())
                    || mode.starts_with("service:"))
                {
                    refuse(
                        &format!("`{key}: {mode}`"),
                        "the host's or another container's namespace is not shared".into(),
                    );
                }
            }
            "security_opt" => {
                for opt in value.as_vec().into_iter().flatten().filter_map(text_of) {
                    let ok = [
                        "no-new-privileges",
                        "no-new-privileges:true",
                        "no-new-privileges=true",
                    ]
                    .contains(&opt.as_str());
                    if !ok {
                        refuse(
                            &format!("`security_opt: {opt}`"),
                            "only no-new-privileges may be set".into(),
                        );
                    }
                }
            }
            other => refuse(&format!("`{other}`"), refusal(other).into()),
        }
    }
}

fn build_problems(build: &Yaml, allowed: &[PathBuf]) -> Vec<String> {
    const KEYS: &[&str] = &[
        "context",
        "dockerfile",
        "dockerfile_inline",
        "args",
        "target",
        "labels",
        "cache_from",
        "shm_size",
        "network",
        "extra_hosts",
        "pull",
        "no_cache",
    ];
    let mut problems = Vec::new();
    let context = match build {
        Yaml::Hash(map) => {
            for key in map.keys().filter_map(Yaml::as_str) {
                if !KEYS.contains(&key) {
                    problems.push(format!("`{key}` in a build is not on ferry's allowlist"));
                }
            }
            text_of(&build["context"])
        }
        other => text_of(other),
    }
    .unwrap_or_else(|| ".".into());
    if let Err(why) = inside(&context, Path::new("/"), allowed) {
        problems.push(format!("context {context}: {why}"));
        return problems;
    }
    if let Some(dockerfile) = text_of(&build["dockerfile"])
        && let Err(why) = inside(&dockerfile, Path::new(&context), allowed)
    {
        problems.push(format!("dockerfile {dockerfile}: {why}"));
    }
    problems
}

/// A service's volume, short (`src:dst[:mode]`) or long syntax: a bind only inside `allowed`.
fn volume_problem(volume: &Yaml, allowed: &[PathBuf]) -> Option<String> {
    let bind = |source: &str| {
        host_path_inside(source, Path::new("/"), allowed)
            .err()
            .map(|why| format!("bind mount of {source}: {why}"))
    };
    match volume {
        Yaml::String(short) => {
            let mut parts = short.splitn(3, ':');
            let source = parts.next().unwrap_or_default();
            // one part is an anonymous volume; a source not starting with `/` or `.` a named one
            let is_path = source.starts_with(['/', '.', '~']);
            if parts.next().is_some() && is_path {
                bind(source)
            } else {
                None
            }
        }
        Yaml::Hash(map) => {
            for key in map.keys().filter_map(Yaml::as_str) {
                if ![
                    "type",
                    "source",
                    "target",
                    "read_only",
                    "bind",
                    "volume",
                    "tmpfs",
                    "consistency",
                ]
                .contains(&key)
                {
                    return Some(format!("`{key}` in a volume is not on ferry's allowlist"));
                }
            }
            let propagation = text_of(&volume["bind"]["propagation"]);
            if propagation.is_some_and(|p| !["private", "rprivate"].contains(&p.as_str())) {
                return Some("bind propagation other than (r)private".into());
            }
            if !volume["bind"]["selinux"].is_badvalue() {
                return Some("`selinux` relabels host files".into());
            }
            match volume["type"].as_str().unwrap_or("volume") {
                "volume" | "tmpfs" => None,
                "bind" => bind(volume["source"].as_str().unwrap_or_default()),
                other => Some(format!("volume type `{other}`")),
            }
        }
        _ => Some("a volume that is neither a string nor a mapping".into()),
    }
}

/// A port is published on 127.0.0.1 only (`"8080:80"`, a bare `"80"` and `published:` without
/// `host_ip` all mean every address).
fn port_problem(port: &Yaml) -> Option<String> {
    let loopback = |ip: &str| ip == "127.0.0.1";
    match port {
        Yaml::Hash(map) => {
            for key in map.keys().filter_map(Yaml::as_str) {
                if ![
                    "target",
                    "published",
                    "host_ip",
                    "protocol",
                    "mode",
                    "name",
                    "app_protocol",
                ]
                .contains(&key)
                {
                    return Some(format!("`{key}` in a port is not on ferry's allowlist"));
                }
            }
            let ip = port["host_ip"].as_str().unwrap_or_default();
            (!loopback(ip)).then(|| {
                format!(
                    "port {} is published on {}: only 127.0.0.1 is allowed",
                    text_of(&port["target"]).unwrap_or_default(),
                    if ip.is_empty() { "every address" } else { ip }
                )
            })
        }
        other => {
            let spec = text_of(other).unwrap_or_default();
            let parts: Vec<&str> = spec.split(':').collect();
            (!(parts.len() == 3 && loopback(parts[0]))).then(|| {
                format!("`{spec}` is published on every address: write `127.0.0.1:HOST:CONTAINER`")
            })
        }
    }
}

fn top_level_problems(doc: &Yaml, project: &str, allowed: &[PathBuf], problems: &mut Vec<String>) {
    // compose v2 writes each volume's and network's `name:`: the project's own is allowed
    let own_name = |key: &str, body: &Yaml| match body["name"].as_str() {
        None => true,
        Some(name) => name == format!("{project}_{key}"),
    };
    let external = |body: &Yaml| match &body["external"] {
        Yaml::Boolean(b) => *b,
        Yaml::BadValue | Yaml::Null => false,
        _ => true,
    };
    for (section, keys) in [
        ("volumes", &["driver", "labels", "name", "external"][..]),
        (
            "networks",
            &[
                "driver",
                "labels",
                "name",
                "external",
                "internal",
                "attachable",
                "ipam",
                "enable_ipv6",
            ][..],
        ),
    ] {
        for (key, body) in doc[section].as_hash().into_iter().flatten() {
            let key = text_of(key).unwrap_or_default();
            let what = format!("{section} `{key}`");
            for k in body
                .as_hash()
                .into_iter()
                .flat_map(|m| m.keys())
                .filter_map(Yaml::as_str)
            {
                if !keys.contains(&k) {
                    let why = if k == "driver_opts" {
                        "driver options can bind host paths"
                    } else {
                        "not on ferry's allowlist"
                    };
                    problems.push(format!("{what}: `{k}`: {why}"));
                }
            }
            if external(body) || !own_name(&key, body) {
                problems.push(format!(
                    "{what}: an external or named one belongs to another project or environment"
                ));
            }
            let driver = body["driver"].as_str().unwrap_or_default();
            let ok_drivers: &[&str] = if section == "volumes" {
                &["", "local"]
            } else {
                &["", "bridge"]
            };
            if !ok_drivers.contains(&driver) {
                problems.push(format!("{what}: driver `{driver}`"));
            }
        }
    }
    for section in ["secrets", "configs"] {
        for (key, body) in doc[section].as_hash().into_iter().flatten() {
            let key = text_of(key).unwrap_or_default();
            if let Some(file) = body["file"].as_str()
                && let Err(why) = host_path_inside(file, Path::new("/"), allowed)
            {
                problems.push(format!("{section} `{key}`: file {file}: {why}"));
            }
            if external(body) {
                problems.push(format!("{section} `{key}`: external ones are not used"));
            }
        }
    }
}

/// `path` (relative to `base`) is inside one of `allowed` once symlinks are followed, and is not
/// a socket (the docker daemon's above all).
fn host_path_inside(path: &str, base: &Path, allowed: &[PathBuf]) -> Result<(), String> {
    let resolved = inside(path, base, allowed)?;
    use std::os::unix::fs::FileTypeExt;
    if std::fs::metadata(&resolved).is_ok_and(|m| m.file_type().is_socket())
        || path.ends_with("docker.sock")
    {
        return Err("a socket (the docker daemon's is root on the host)".into());
    }
    Ok(())
}

/// `path` resolved against `base`, symlinks followed as far as it exists, if inside `allowed`.
fn inside(path: &str, base: &Path, allowed: &[PathBuf]) -> Result<PathBuf, String> {
    if path.contains('$') || path.starts_with('~') {
        return Err("variables are not expanded here: write the path".into());
    }
    let joined = base.join(path);
    if !joined.is_absolute() || joined.components().any(|c| c == Component::ParentDir) {
        return Err("a path with `..` or not absolute".into());
    }
    let resolved = resolve(&joined);
    if allowed.iter().any(|dir| resolved.starts_with(resolve(dir))) {
        Ok(resolved)
    } else {
        let dirs: Vec<String> = allowed.iter().map(|d| d.display().to_string()).collect();
        Err(format!(
            "outside the dirs a compose file may use ({})",
            dirs.join(", ")
        ))
    }
}

/// `path` with its longest existing prefix canonicalized (symlinks followed) and the rest kept.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest
                .iter()
                .rev()
                .fold(real, |acc: PathBuf, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

fn truthy(value: &Yaml) -> bool {
    match value {
        Yaml::Boolean(b) => *b,
        Yaml::String(s) => !["false", "0", "no", ""].contains(&s.to_ascii_lowercase().as_str()),
        Yaml::Integer(i) => *i != 0,
        Yaml::Null | Yaml::BadValue => false,
        _ => true,
    }
}

fn text_of(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
