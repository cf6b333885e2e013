//! What an image says about running it (its config's `config` object), and the rules that
//! combine it with a request, as Docker and Kubernetes do:
//!
//! - argv: a request's `command` replaces the entrypoint (and drops the image's cmd); its
//!   `args` replace the cmd; the process runs entrypoint + cmd;
//! - env: the image's, each overridden by the request's of the same name
//!   (`runtime::spec::overlay_env`);
//! - working dir and user: the request's, else the image's.

use super::ImageError;

/// An image's run settings, from its config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// In the image's order, `NAME=value` split at the first `=`.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// As written in the image: `uid`, `uid:gid`, `name`, `name:group`; None for root.
    pub user: Option<String>,
    /// `80/tcp`, `53/udp`, sorted.
    pub exposed_ports: Vec<String>,
}

impl ImageConfig {
    /// Parses a config blob (OCI or Docker: the fields used here are the same).
    pub fn parse(json: &[u8]) -> Result<ImageConfig, ImageError> {
        let c: oci_spec::image::ImageConfiguration = serde_json::from_slice(json)
            .map_err(|e| ImageError::Registry(format!("the image's config is not an OCI image config: {e}")))?;
        let Some(c) = c.config().clone() else {
            return Ok(ImageConfig::default());
        };
        let env = c
            .env()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .filter(|(k, _)| !k.is_empty())
            .collect();
        let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        Ok(ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env,
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
        })
    }

    /// The argv to run: `command` replaces the entrypoint and drops the image's cmd,
    /// `args` replace the cmd. Empty when neither the image nor the request names one.
    pub fn argv(&self, command: &[String], args: &[String]) -> Vec<String> {
        let (entrypoint, cmd) = if command.is_empty() {
            (&self.entrypoint[..], if args.is_empty() { &self.cmd[..] } else { args })
        } else {
            (command, args)
        };
        entrypoint.iter().chain(cmd).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_config_is_read_from_an_oci_config_blob() {
        let json = br#"{"architecture":"amd64","os":"linux","config":{
            "Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin","GREETING=a=b","EMPTY="],
            "WorkingDir":"/srv","User":"web:web","ExposedPorts":{"8080/tcp":{},"53/udp":{}}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::parse(json).unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.cmd, ["echo hi"]);
        assert_eq!(
            c.env,
            [
                ("PATH".into(), "/bin".into()),
                ("GREETING".into(), "a=b".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.user.as_deref(), Some("web:web"));
        assert_eq!(c.exposed_ports, ["53/udp", "8080/tcp"]);
        let bare =
            ImageConfig::parse(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#)
                .unwrap();
        assert_eq!(bare, ImageConfig::default());
        assert!(ImageConfig::parse(b"[]").is_err());
    }

    #[test]
    fn argv_follows_dockers_entrypoint_and_cmd_rules() {
        let c = ImageConfig {
            entrypoint: s(&["/bin/sh", "-c"]),
            cmd: s(&["echo image"]),
            ..Default::default()
        };
        assert_eq!(c.argv(&[], &[]), ["/bin/sh", "-c", "echo image"]);
        assert_eq!(c.argv(&[], &s(&["echo mine"])), ["/bin/sh", "-c", "echo mine"]);
        assert_eq!(
            c.argv(&s(&["/bin/env"]), &[]),
            ["/bin/env"],
            "a new entrypoint drops the cmd"
        );
        assert_eq!(c.argv(&s(&["/bin/echo"]), &s(&["x"])), ["/bin/echo", "x"]);
        let cmd_only = ImageConfig {
            cmd: s(&["/bin/sh"]),
            ..Default::default()
        };
        assert_eq!(cmd_only.argv(&[], &s(&["ls", "/"])), ["ls", "/"]);
        assert!(ImageConfig::default().argv(&[], &[]).is_empty());
    }
}
