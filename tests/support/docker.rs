//! Tests with a real docker daemon: skip (with a printed reason) when none answers, a base
//! image built without any registry (`FROM scratch` plus the static busybox of Debian's
//! `busybox-static`), Dockerfiles for the releases of a test app, and a guard removing every
//! container and image a test made.
//!
//! ```ignore
//! let Some(kit) = docker_or_skip("my_test") else { return };
//! std::fs::write(repo.join("Dockerfile"), app_dockerfile(&kit.base_image(), "v1.0.0"))?;
//! // name containers/images with kit.name("web"), label them with kit.label()
//! ```

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use ferry::docker::Docker;

/// The label every container and image of a test carries (value: the test's prefix).
pub const TEST_LABEL: &str = "ferry.test";

/// The base image tag: shared by every test process and left in place (a 2 MB cache, like
/// a build cache); tests build their images `FROM` it.
const BASE_TAG: &str = "ferry-test-busybox:1";

/// Where Debian's busybox-static puts its static binary.
const BUSYBOX: &str = "/bin/busybox";

/// The docker program the tests drive (`FERRY_DOCKER`, else `docker` on PATH).
pub fn docker_program() -> PathBuf {
    Docker::new().program().to_path_buf()
}

/// A docker daemon for `test`, or `None` after printing `SKIPPED <test>: <reason>` to stderr
/// (no docker, no daemon, no busybox to build images from). With
/// `FERRY_TESTS_REQUIRE_DOCKER=1` a missing daemon fails the test instead.
pub fn docker_or_skip(test: &str) -> Option<DockerKit> {
    match probe() {
        Ok(()) => Some(DockerKit::new(test)),
        Err(reason) => {
            if std::env::var_os("FERRY_TESTS_REQUIRE_DOCKER").is_some_and(|v| v == "1") {
                panic!("{test}: docker is required (FERRY_TESTS_REQUIRE_DOCKER=1): {reason}");
            }
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
    }
}

/// Whether docker answers, asked once per test process.
fn probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let program = docker_program();
            let out = output(
                Command::new(&program).args(["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(20),
            )
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
            let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !out.status.success() || version.is_empty() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let reason = stderr
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("no server version");
                return Err(format!("no docker daemon reachable: {reason}"));
            }
            match std::fs::read(BUSYBOX) {
                Err(e) => Err(format!(
                    "{BUSYBOX} ({e}): install Debian's busybox-static to build test images"
                )),
                Ok(elf) if !is_static(&elf) => Err(format!(
                    "{BUSYBOX} is not statically linked: install Debian's busybox-static \
                     (a FROM scratch image has no libc)"
                )),
                Ok(_) => Ok(()),
            }
        })
        .clone()
}

/// Whether `elf` (a 64-bit little-endian ELF executable) has no program interpreter, that
/// is, runs without a dynamic loader and libc.
pub fn is_static(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count).all(|i| u32_at(phoff + i * size).is_some_and(|t| t != PT_INTERP))
}

/// Runs `cmd` to its end with output captured, killed after `limit`.
pub fn output(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // read both pipes beside the wait, so a chatty command cannot block on a full pipe
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).map(|_| b)
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).map(|_| b)
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no end within {limit:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap()?,
        stderr: err.join().unwrap()?,
    })
}

/// `docker <args>`, which must succeed: its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = output(
        Command::new(docker_program()).args(args),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The prefix of the `n`th kit of test process `pid`: short, unique on the machine (other
/// test processes run beside this one), and never inside another kit's names, since cleanup
/// goes by "the name contains the prefix" (`fdt12n001` is not in `fdt123n001`, nor `…n001`
/// in `…n0010`: `n` is below 1000).
pub fn kit_prefix(pid: u32, n: u32) -> String {
    format!("fdt{pid}n{n:03}")
}

/// A test's handle on the daemon: its unique prefix and label, the base image, and (on drop)
/// the removal of every container and image carrying either.
pub struct DockerKit {
    pub docker: Docker,
    prefix: String,
}

impl DockerKit {
    fn new(test: &str) -> DockerKit {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = kit_prefix(std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        eprintln!("{test}: docker objects prefixed {prefix}");
        DockerKit {
            docker: Docker::new(),
            prefix,
        }
    }

    /// This test's prefix: in every container name and image tag it makes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>-<what>`: a container name or image repository for this test (lowercase
    /// `what` for an image).
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// The label marking this test's containers and images for removal.
    pub fn label(&self) -> (String, String) {
        (TEST_LABEL.to_string(), self.prefix.clone())
    }

    /// The base image (`FROM scratch`, busybox as /bin/busybox with its applets linked in
    /// /bin: sh, httpd, sleep, …), built once per test process if the daemon lacks it.
    pub fn base_image(&self) -> String {
        static BUILT: Mutex<bool> = Mutex::new(false);
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if !*built {
            build_base_image();
            *built = true;
        }
        BASE_TAG.to_string()
    }

    /// A guard removing, when dropped, the containers and images whose name contains
    /// `prefix` or that carry the test label with that value.
    pub fn guard(&self, prefix: &str) -> Cleanup {
        Cleanup {
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for DockerKit {
    fn drop(&mut self) {
        remove_all(&self.prefix);
    }
}

/// Removes, when dropped, every container and image of a prefix (see [`DockerKit::guard`]).
pub struct Cleanup {
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_all(&self.prefix);
    }
}

/// Removes the containers, then the images, whose name contains `prefix` or that carry the
/// test label `prefix`. Best effort: a test's failure must stay the failure shown.
pub fn remove_all(prefix: &str) {
    let run = |args: &[&str]| -> String {
        output(
            Command::new(docker_program()).args(args),
            Duration::from_secs(60),
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    };
    let label = format!("label={TEST_LABEL}={prefix}");
    let mut containers: Vec<String> = run(&["ps", "-a", "--no-trunc", "-q", "--filter", &label])
        .lines()
        .map(str::to_string)
        .collect();
    for line in run(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]).lines() {
        if let Some((id, names)) = line.split_once(' ')
            && names.contains(prefix)
        {
            containers.push(id.to_string());
        }
    }
    containers.sort();
    containers.dedup();
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f", "--"];
        args.extend(containers.iter().map(String::as_str));
        run(&args);
    }
    let mut images: Vec<String> = run(&["images", "-q", "--no-trunc", "--filter", &label])
        .lines()
        .map(str::to_string)
        .collect();
    for line in run(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines() {
        if line.contains(prefix) {
            images.push(line.to_string());
        }
    }
    images.sort();
    images.dedup();
    if !images.is_empty() {
        let mut args = vec!["rmi", "-f", "--"];
        args.extend(images.iter().map(String::as_str));
        run(&args);
    }
}

fn build_base_image() {
    let exists = output(
        Command::new(docker_program()).args(["image", "inspect", "--format", "{{.Id}}", BASE_TAG]),
        Duration::from_secs(30),
    )
    .is_ok_and(|o| o.status.success());
    if exists {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(BUSYBOX, dir.path().join("busybox")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /tmp /www && chmod 1777 /tmp\n",
    )
    .unwrap();
    let out = output(
        Command::new(docker_program())
            .env("DOCKER_BUILDKIT", "0")
            .args([
                "build",
                "-q",
                "--force-rm",
                "-t",
                BASE_TAG,
                "--label",
                "ferry.test=base",
            ])
            .arg(dir.path()),
        Duration::from_secs(120),
    )
    .expect("docker build of the test base image");
    assert!(
        out.status.success(),
        "building {BASE_TAG}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Dockerfile of a release of the test app, `FROM base`: at start it prints
/// `app <version> starting on <PORT>`, writes `/www/health` with the version, then serves
/// `/www` with busybox httpd on `127.0.0.1:$PORT` (host networking), in the foreground.
pub fn app_dockerfile(base: &str, version: &str) -> String {
    format!(
        "FROM {base}\n\
         LABEL ferry.test.version=\"{version}\"\n\
         CMD echo \"app {version} starting on $PORT\"; \
         echo \"{version}\" > /www/health && \
         exec httpd -f -v -p \"127.0.0.1:$PORT\" -h /www\n"
    )
}

/// A Dockerfile whose build fails at a `RUN` that prints `message` first.
pub fn failing_dockerfile(base: &str, message: &str) -> String {
    format!("FROM {base}\nRUN echo \"{message}\" && false\n")
}

/// A Dockerfile of an image that exits with `code` as soon as it starts.
pub fn exiting_dockerfile(base: &str, code: i32) -> String {
    format!("FROM {base}\nCMD echo \"exiting with {code}\"; exit {code}\n")
}

/// A container's output so far (`docker logs`), both streams.
pub fn logs(container: &str) -> String {
    let out = output(
        Command::new(docker_program()).args(["logs", "--", container]),
        Duration::from_secs(30),
    )
    .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
