//! The compose command lines ferry builds (pure, unit-tested for both flavours), and the
//! checks every value on them passes first.

use std::ffi::OsString;
use std::path::Path;

use super::*;

impl Compose {
    /// The program and the arguments that select the project, before the subcommand.
    pub(super) fn base_args(
        &self,
        p: &Project,
        image: Option<&Path>,
    ) -> Result<Vec<OsString>, ComposeError> {
        for path in [&p.file, &p.directory].into_iter().chain(&p.overrides) {
            check_absolute("compose path", path)?;
        }
        let mut args: Vec<OsString> = Vec::new();
        if self.flavor == Flavor::V2 {
            args.push("compose".into());
        }
        args.extend(["--ansi", "never", "-p"].map(OsString::from));
        args.push(project_name(&p.name).into());
        args.push("--project-directory".into());
        args.push(p.directory.clone().into());
        for file in std::iter::once(&p.file)
            .chain(&p.overrides)
            .map(PathBuf::as_path)
            .chain(image)
        {
            args.push("-f".into());
            args.push(file.into());
        }
        Ok(args)
    }

    pub(super) fn services_args(&self, p: &Project) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["config", "--services"].map(OsString::from));
        Ok(args)
    }

    pub(super) fn config_args(&self, p: &Project) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.push("config".into());
        Ok(args)
    }

    pub(super) fn build_args(
        &self,
        p: &Project,
        image: &Path,
        service: &str,
    ) -> Result<Vec<OsString>, ComposeError> {
        check_service(service)?;
        let mut args = self.base_args(p, Some(image))?;
        args.push("build".into());
        if self.flavor == Flavor::V1 {
            // the legacy builder leaves a failed step's container behind without it
            args.push("--force-rm".into());
        }
        args.extend(["--", service].map(OsString::from));
        Ok(args)
    }

    pub(super) fn run_args(
        &self,
        p: &Project,
        image: &Path,
        spec: &RunSpec,
    ) -> Result<Vec<OsString>, ComposeError> {
        check_service(&spec.service)?;
        check_image(&spec.image)?;
        check_container_name(&spec.name)?;
        let mut args = self.base_args(p, Some(image))?;
        args.extend(["run", "-d", "--no-deps", "--name", &spec.name].map(OsString::from));
        for (key, value) in &spec.labels {
            check_label(key, value)?;
            args.push("-l".into());
            args.push(format!("{key}={value}").into());
        }
        if let Some((host, container)) = spec.publish {
            args.push("--publish".into());
            args.push(format!("127.0.0.1:{host}:{container}").into());
        }
        for (source, target, read_only) in &spec.mounts {
            check_mount(source, target)?;
            let mut volume = source.clone().into_os_string();
            volume.push(":");
            volume.push(target);
            if *read_only {
                volume.push(":ro");
            }
            args.push("-v".into());
            args.push(volume);
        }
        for (name, _) in &spec.env {
            check_env_name(name)?;
            args.push("-e".into());
            args.push(name.into());
        }
        args.push("--".into());
        args.push((&spec.service).into());
        args.extend(spec.command.iter().flatten().map(OsString::from));
        Ok(args)
    }

    pub(super) fn up_args(
        &self,
        p: &Project,
        services: &[String],
        recreate: bool,
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["up", "-d", "--no-deps"].map(OsString::from));
        if !recreate {
            args.push("--no-recreate".into());
        }
        push_services(&mut args, services)?;
        Ok(args)
    }

    pub(super) fn stop_args(
        &self,
        p: &Project,
        services: &[String],
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.push("stop".into());
        push_services(&mut args, services)?;
        Ok(args)
    }

    pub(super) fn rm_args(
        &self,
        p: &Project,
        services: &[String],
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["rm", "-f"].map(OsString::from));
        push_services(&mut args, services)?;
        Ok(args)
    }

    pub(super) fn restart_args(
        &self,
        p: &Project,
        services: &[String],
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.push("restart".into());
        push_services(&mut args, services)?;
        Ok(args)
    }

    pub(super) fn logs_args(
        &self,
        p: &Project,
        services: &[String],
        tail: usize,
        follow: bool,
    ) -> Result<Vec<OsString>, ComposeError> {
        let mut args = self.base_args(p, None)?;
        args.extend(["logs", "--no-color", "--tail"].map(OsString::from));
        args.push(tail.to_string().into());
        if follow {
            args.push("-f".into());
        }
        push_services(&mut args, services)?;
        Ok(args)
    }
}

/// `-- SERVICES...` after checking each name.
pub(super) fn push_services(
    args: &mut Vec<OsString>,
    services: &[String],
) -> Result<(), ComposeError> {
    args.push("--".into());
    for service in services {
        check_service(service)?;
        args.push(service.into());
    }
    Ok(())
}

pub(super) fn ps_args(p: &Project) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["ps", "-a", "--no-trunc", "--filter"]
        .map(OsString::from)
        .to_vec();
    args.push(format!("label=com.docker.compose.project={}", project_name(&p.name)).into());
    args.push("--format".into());
    args.push(
        "{{.ID}}\t{{.Names}}\t{{.State}}\t{{.Label \"com.docker.compose.service\"}}\t{{.Label \"com.docker.compose.oneoff\"}}\t{{.Status}}"
            .into(),
    );
    args
}

pub(super) fn invalid(what: &'static str, value: &str, why: &'static str) -> ComposeError {
    ComposeError::Invalid {
        what,
        value: value.to_string(),
        why,
    }
}

pub(super) fn name_like(value: &str, extra: &[char]) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
}

pub(super) fn check_service(service: &str) -> Result<(), ComposeError> {
    if name_like(service, &['_', '.', '-']) {
        Ok(())
    } else {
        Err(invalid(
            "service name",
            service,
            "a service name is letters, digits, `_`, `.` and `-`, starting with a letter or digit",
        ))
    }
}

pub(super) fn check_container_name(name: &str) -> Result<(), ComposeError> {
    if name_like(name, &['_', '.', '-']) && name.len() > 1 {
        Ok(())
    } else {
        Err(invalid(
            "container name",
            name,
            "a container name is letters, digits, `_`, `.` and `-`, starting with a letter or digit",
        ))
    }
}

pub(super) fn check_image(image: &str) -> Result<(), ComposeError> {
    if name_like(image, &['_', '.', '-', '/', ':', '@']) {
        Ok(())
    } else {
        Err(invalid(
            "image reference",
            image,
            "an image reference is letters, digits and `_.-/:@`, starting with a letter or digit",
        ))
    }
}

pub(super) fn check_env_name(name: &str) -> Result<(), ComposeError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "environment variable name",
            name,
            "a name is letters, digits and `_`, not starting with a digit",
        ))
    }
}

pub(super) fn check_label(key: &str, value: &str) -> Result<(), ComposeError> {
    if !name_like(key, &['_', '.', '-', '/']) {
        return Err(invalid(
            "label key",
            key,
            "a label key is letters, digits and `_.-/`, starting with a letter or digit",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            "label value",
            value,
            "a label value has no control characters",
        ));
    }
    Ok(())
}

pub(super) fn check_absolute(what: &'static str, path: &Path) -> Result<(), ComposeError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(invalid(
            what,
            &path.display().to_string(),
            "the path must be absolute",
        ))
    }
}

pub(super) fn check_mount(source: &Path, target: &str) -> Result<(), ComposeError> {
    check_absolute("mount source", source)?;
    let bad = |s: &str| s.contains([':', ',']) || s.chars().any(char::is_control);
    if bad(&source.to_string_lossy()) {
        return Err(invalid(
            "mount source",
            &source.display().to_string(),
            "a mount path has no `:`, `,` or control characters",
        ));
    }
    if !target.starts_with('/') || bad(target) {
        return Err(invalid(
            "mount target",
            target,
            "a mount target is an absolute path without `:`, `,` or control characters",
        ));
    }
    Ok(())
}

// ---- errors ----
