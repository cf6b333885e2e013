//! The CRI `ImageService` on the node's image store.
//!
//! The store keeps one record per reference pulled. kubelet thinks in images: an image's
//! **id** is its config digest (as containerd's and CRI-O's are), every reference the node
//! has for that config is one of its `repo_tags`, and `REPO@MANIFEST_DIGEST` its
//! `repo_digests`. The id is accepted wherever a reference is (kubelet creates containers
//! by the id `ImageStatus` or `PullImage` gave it), and so is a digest reference.

use super::{unix_nanos, Cri, CriError};
use crate::image::catalog::{Images, Record};
use crate::image::pull::{parse_reference, Credentials};
use crate::image::ImageError;
use aurae_proto::cri;

/// Finds the image `spec` names: its id, a reference (short or full), `NAME@sha256:...`, or
/// a manifest digest. None when the node does not have it.
pub fn find(images: &Images, spec: &str) -> Result<Option<Record>, CriError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(CriError::Invalid {
            field: "image.image",
            why: "empty; name an image as NAME[:TAG], NAME@sha256:DIGEST, or by its id".into(),
        });
    }
    if spec.starts_with("sha256:") {
        return Ok(images.list().into_iter().find(|r| r.config == spec || r.digest == spec));
    }
    let parsed = parse_reference(spec).map_err(|e| CriError::Invalid {
        field: "image.image",
        why: e.to_string(),
    })?;
    if let Some(digest) = parsed.digest() {
        let repo = format!("{}/{}", parsed.registry(), parsed.repository());
        return Ok(images
            .list()
            .into_iter()
            .find(|r| r.digest == digest && repository_of(&r.reference).as_deref() == Some(repo.as_str())));
    }
    match images.get(spec) {
        Ok(r) => Ok(Some(r)),
        Err(ImageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `REGISTRY/REPOSITORY` of a full reference.
fn repository_of(reference: &str) -> Option<String> {
    let r = parse_reference(reference).ok()?;
    Some(format!("{}/{}", r.registry(), r.repository()))
}

/// The image whose id is `id`, as the CRI shows it: every record with that config.
pub fn image(images: &Images, all: &[Record], id: &str) -> Option<cri::Image> {
    let same: Vec<&Record> = all.iter().filter(|r| r.config == id).collect();
    let first = same.first()?;
    let mut repo_tags: Vec<String> = same
        .iter()
        .filter(|r| !r.reference.contains('@'))
        .map(|r| r.reference.clone())
        .collect();
    let mut repo_digests: Vec<String> = same
        .iter()
        .filter_map(|r| repository_of(&r.reference).map(|repo| format!("{repo}@{}", r.digest)))
        .collect();
    repo_tags.sort();
    repo_tags.dedup();
    repo_digests.sort();
    repo_digests.dedup();
    let user = images
        .config_json(first)
        .ok()
        .and_then(|j| crate::image::config::ImageConfig::parse(&j).ok())
        .and_then(|c| c.user)
        .unwrap_or_default();
    // "1000", "1000:1000" → a uid; "nginx" or "nginx:web" → a user name kubelet resolves.
    let name = user.split(':').next().unwrap_or_default();
    let (uid, username) = match name.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) => (None, name.to_owned()),
    };
    Some(cri::Image {
        id: id.to_owned(),
        repo_tags,
        repo_digests,
        size: first.size(),
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: id.to_owned(),
            ..Default::default()
        }),
        pinned: false,
    })
}

/// Credentials from a CRI `AuthConfig`: a user name and password, or `auth` (base64 of
/// `user:password`, as in a Docker config). Bearer tokens are refused by name.
pub fn credentials(auth: Option<cri::AuthConfig>) -> Result<Option<Credentials>, CriError> {
    let Some(a) = auth else { return Ok(None) };
    if !a.identity_token.is_empty() || !a.registry_token.is_empty() {
        let field = if a.identity_token.is_empty() {
            "auth.registry_token"
        } else {
            "auth.identity_token"
        };
        return Err(CriError::Invalid {
            field,
            why: "bearer tokens are not supported; give username and password (or auth)".into(),
        });
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Some(Credentials {
            username: a.username,
            password: a.password,
        }));
    }
    if a.auth.is_empty() {
        return Ok(None);
    }
    use base64::Engine;
    let bad = |why: &str| CriError::Invalid {
        field: "auth.auth",
        why: format!("{why}; send base64 of USER:PASSWORD, or username and password"),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(a.auth.trim())
        .map_err(|_| bad("not base64"))?;
    let text = String::from_utf8(decoded).map_err(|_| bad("not UTF-8 once decoded"))?;
    let (username, password) = text
        .split_once(':')
        .ok_or_else(|| bad("no ':' between user and password"))?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

fn spec_of(image: Option<cri::ImageSpec>) -> String {
    image.map(|i| i.image).unwrap_or_default()
}

impl Cri {
    pub async fn image_status(&self, r: cri::ImageStatusRequest) -> Result<cri::ImageStatusResponse, CriError> {
        let images = self.images()?;
        let image = match find(images, &spec_of(r.image))? {
            Some(rec) => image(images, &images.list(), &rec.config),
            None => None,
        };
        Ok(cri::ImageStatusResponse {
            image,
            info: Default::default(),
        })
    }

    pub async fn list_images(&self, r: cri::ListImagesRequest) -> Result<cri::ListImagesResponse, CriError> {
        let images = self.images()?;
        let all = images.list();
        let mut ids: Vec<String> = match r.filter.and_then(|f| f.image).map(|i| i.image) {
            Some(spec) if !spec.is_empty() => find(images, &spec)?.map(|r| r.config).into_iter().collect(),
            _ => all.iter().map(|r| r.config.clone()).collect(),
        };
        ids.sort();
        ids.dedup();
        Ok(cri::ListImagesResponse {
            images: ids.iter().filter_map(|id| image(images, &all, id)).collect(),
        })
    }

    /// Pulls as the request says and answers the image's id.
    pub async fn pull_image(&self, r: cri::PullImageRequest) -> Result<cri::PullImageResponse, CriError> {
        let images = self.images()?;
        let reference = spec_of(r.image);
        if reference.trim().is_empty() {
            return Err(CriError::Invalid {
                field: "image.image",
                why: "empty; name the image to pull as REGISTRY/NAME:TAG".into(),
            });
        }
        let credentials = credentials(r.auth)?;
        let record = images.pull(reference.trim(), credentials, &mut |_| {}).await?;
        tracing::info!("CRI: pulled {} as {}", record.reference, record.config);
        Ok(cri::PullImageResponse {
            image_ref: record.config,
        })
    }

    /// Removes the image a reference names, or every reference of the image an id names.
    /// An image the node does not have is removed already: OK (kubelet's GC retries).
    pub async fn remove_image(&self, r: cri::RemoveImageRequest) -> Result<cri::RemoveImageResponse, CriError> {
        let images = self.images()?;
        let spec = spec_of(r.image);
        let Some(found) = find(images, &spec)? else {
            return Ok(cri::RemoveImageResponse {});
        };
        let references: Vec<String> = if spec.trim() == found.config {
            (images.list().into_iter())
                .filter(|r| r.config == found.config)
                .map(|r| r.reference)
                .collect()
        } else {
            vec![found.reference]
        };
        for reference in references {
            let rt = self.rt.clone();
            let in_use = move || rt.usage().images;
            match images.remove(&reference, in_use).await {
                Ok(_) | Err(ImageError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(cri::RemoveImageResponse {})
    }

    /// The image store's filesystem: bytes the store holds, inodes the filesystem uses.
    pub async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, CriError> {
        let images = self.images()?;
        let (path, used, _limit) = images.store_usage();
        let inodes = nix::sys::statvfs::statvfs(&path)
            .ok()
            .map(|s| s.files().saturating_sub(s.files_free()));
        let usage = cri::FilesystemUsage {
            timestamp: unix_nanos(std::time::SystemTime::now()),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: path.to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value { value: used }),
            inodes_used: inodes.map(|value| cri::UInt64Value { value }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(f: impl FnOnce(&mut cri::AuthConfig)) -> Option<cri::AuthConfig> {
        let mut a = cri::AuthConfig::default();
        f(&mut a);
        Some(a)
    }

    #[test]
    fn credentials_come_from_user_and_password_or_a_docker_auth_string() {
        assert!(credentials(None).unwrap().is_none());
        assert!(credentials(auth(|_| {})).unwrap().is_none());
        let c = credentials(auth(|a| {
            a.username = "puller".into();
            a.password = "pw".into();
        }))
        .unwrap()
        .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("puller", "pw"));
        // base64("puller:p:w"): the password may hold a colon.
        let c = credentials(auth(|a| a.auth = "cHVsbGVyOnA6dw==".into()))
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("puller", "p:w"));
        for (f, field) in [
            (auth(|a| a.auth = "***".into()), "auth.auth"),
            (auth(|a| a.auth = "bm9jb2xvbg==".into()), "auth.auth"),
            (auth(|a| a.registry_token = "t".into()), "auth.registry_token"),
            (auth(|a| a.identity_token = "t".into()), "auth.identity_token"),
        ] {
            match credentials(f) {
                Err(CriError::Invalid { field: got, why }) => {
                    assert_eq!(got, field);
                    assert!(why.contains("username and password"), "{why}");
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
