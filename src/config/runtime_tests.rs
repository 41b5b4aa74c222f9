//! `[app] runtime`, `[app.docker]` and `[app.compose]`.

use super::*;

fn app(keys: &str) -> String {
    format!(
        "[app]\nname = \"demo\"\nrepo = \"repo\"\n{keys}\n\n[environments.staging]\nlisten = \"127.0.0.1:8081\"\n"
    )
}

#[test]
fn process_is_the_default_and_needs_start() {
    let dir = sandbox();
    let config = parse(dir.path(), MINIMAL).unwrap();
    assert_eq!(config.app.runtime, Runtime::Process);
    let d = diagnostic(dir.path(), &app(""));
    assert!(d.message.contains("no `start`"), "{d}");
    assert!(d.to_string().contains("container runtime"), "{d}");
}

#[test]
fn docker_runtime_gets_documented_defaults_and_start_is_optional() {
    let dir = sandbox();
    let config = parse(dir.path(), &app("runtime = \"docker\"")).unwrap();
    let Runtime::Docker { image, container } = &config.app.runtime else {
        panic!("{:?}", config.app.runtime);
    };
    assert_eq!(image.dockerfile, "Dockerfile");
    assert_eq!(image.context, ".");
    assert_eq!(container.shared_at, "/shared");
    assert_eq!(container.secrets_at, "/run/secrets/ferry.env");
    assert_eq!(container.network, Network::Host);
    assert_eq!(container.user, ContainerUser::Environment);
    assert_eq!(config.app.start, "");
    // the table alone implies the runtime
    let text = app(
        "[app.docker]\ndockerfile = \"deploy/Dockerfile\"\nnetwork = \"publish\"\nuser = \"image\"",
    );
    let config = parse(dir.path(), &text).unwrap();
    let Runtime::Docker { image, container } = &config.app.runtime else {
        panic!("{:?}", config.app.runtime);
    };
    assert_eq!(image.dockerfile, "deploy/Dockerfile");
    assert_eq!(container.network, Network::Publish);
    assert_eq!(container.user, ContainerUser::Image);
}

#[test]
fn compose_runtime_names_its_file_and_service() {
    let dir = sandbox();
    let text = app("compose = { file = \"deploy/compose.yml\", service = \"web\" }");
    let config = parse(dir.path(), &text).unwrap();
    let Runtime::Compose { compose, .. } = &config.app.runtime else {
        panic!("{:?}", config.app.runtime);
    };
    assert_eq!(compose.file, "deploy/compose.yml");
    assert_eq!(compose.service, "web");
    let config = parse(dir.path(), &app("compose = { service = \"api\" }")).unwrap();
    assert_eq!(config.app.runtime.name(), "compose");
}

#[test]
fn runtime_mistakes_are_located_and_explained() {
    let dir = sandbox();
    let cases = [
        ("runtime = \"podman\"", "runtime \"podman\" is not known"),
        ("runtime = \"compose\"", "needs [app.compose]"),
        (
            "runtime = \"process\"\nstart = \"./run\"\ndocker = { network = \"host\" }",
            "[app.docker] is set",
        ),
        (
            "runtime = \"docker\"\ncompose = { service = \"web\" }",
            "[app.compose] is set",
        ),
        ("compose = { service = \"\" }", "`service` is empty"),
        (
            "compose = { file = \"/etc/compose.yml\", service = \"web\" }",
            "must be relative",
        ),
        (
            "docker = { dockerfile = \"../Dockerfile\" }",
            "must be relative",
        ),
        (
            "docker = { shared_at = \"data\" }",
            "not a path for a mount",
        ),
        (
            "docker = { secrets_at = \"/run/a,b\" }",
            "not a path for a mount",
        ),
        (
            "docker = { network = \"bridge\" }",
            "network \"bridge\" is not known",
        ),
        ("docker = { user = \"root\" }", "user \"root\" is not known"),
        (
            "compose = { service = \"web\" }\ndocker = { dockerfile = \"Dockerfile\" }",
            "do not apply to runtime = \"compose\"",
        ),
        ("runtime = \"docker\"\nstart = \" \"", "`start` is empty"),
    ];
    for (keys, expected) in cases {
        let d = diagnostic(dir.path(), &app(keys));
        assert!(d.message.contains(expected), "{keys}: {d}");
    }
}
