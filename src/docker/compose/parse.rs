//! Reading what compose and docker print: `docker ps --format` lines, `compose config`.

use super::*;

/// The lines of `docker ps --format` as [`ps_args`] asks for them.
pub(super) fn parse_ps(stdout: &str) -> Vec<ServiceState> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let id = f.next()?.trim();
            if id.is_empty() {
                return None;
            }
            Some(ServiceState {
                id: id.to_string(),
                name: f.next()?.to_string(),
                state: f.next()?.to_string(),
                service: f.next()?.to_string(),
                one_off: f.next()?.eq_ignore_ascii_case("true"),
                status: f.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// The services of `config`'s output (normalized YAML, both flavours).
pub(super) fn parse_config(stdout: &str) -> Result<Vec<ServiceInfo>, String> {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(stdout)
        .map_err(|e| format!("compose's `config` output is not YAML: {e}"))?;
    let Some(services) = docs.first().and_then(|d| d["services"].as_hash()) else {
        return Ok(Vec::new());
    };
    let text = |y: &Yaml| match y {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Real(r) => Some(r.clone()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    Ok(services
        .iter()
        .filter_map(|(name, body)| {
            Some(ServiceInfo {
                name: text(name)?,
                build: !body["build"].is_badvalue() && !body["build"].is_null(),
                image: text(&body["image"]),
                network_mode: text(&body["network_mode"]),
            })
        })
        .collect())
}
