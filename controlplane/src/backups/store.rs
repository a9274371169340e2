//! Where tenant backups are kept: a directory on the control plane's host
//! (the local provider), or an S3 bucket (the AWS provider, whose control
//! plane runs on hosts that come and go). Either way a bundle is written and
//! read as files in a local directory; on S3 it is uploaded once written (its
//! manifest last, so that a bundle whose upload was cut short never verifies)
//! and fetched back to be read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::workflow::export;

#[derive(Clone)]
pub enum BackupStore {
    /// Bundles at `<dir>/<tenant>/<backup>`.
    Directory(PathBuf),
    /// Bundles as objects `<tenant>/<backup>/<file>` of one bucket.
    S3(Arc<Bucket>),
}

pub struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
    /// Where bundles are written before their upload, and fetched to be read.
    staging: PathBuf,
    /// Made on first use, unless it exists (like the usage tables).
    made: OnceCell<()>,
}

/// A bundle's files to read, where they are; a fetched copy is removed when
/// this is dropped.
pub struct Fetched {
    path: PathBuf,
    copy: bool,
}

impl Fetched {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        if self.copy {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

const S3_SCHEME: &str = "s3://";

impl BackupStore {
    /// Bundles under `<data_dir>/backups`.
    pub fn directory(data_dir: &Path) -> Self {
        Self::Directory(data_dir.join("backups"))
    }

    /// Bundles in the bucket `name`, staged under `<data_dir>/backups`. A
    /// client given an endpoint (moto's) addresses the bucket by path.
    pub fn s3(config: &aws_config::SdkConfig, name: &str, data_dir: &Path) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config).force_path_style(config.endpoint_url().is_some()).build();
        Self::S3(Arc::new(Bucket {
            s3: aws_sdk_s3::Client::from_conf(s3),
            name: name.to_owned(),
            staging: data_dir.join("backups"),
            made: OnceCell::new(),
        }))
    }

    /// Where the bundle of `tenant`'s backup `backup` is written, and the
    /// location recorded for it (the same path, or its `s3://` address).
    pub fn place(&self, tenant: Uuid, backup: Uuid) -> (PathBuf, String) {
        match self {
            Self::Directory(dir) => {
                let path = dir.join(tenant.to_string()).join(backup.to_string());
                let location = path.to_string_lossy().into_owned();
                (path, location)
            }
            Self::S3(bucket) => (
                bucket.staging.join(tenant.to_string()).join(backup.to_string()),
                format!("{S3_SCHEME}{}/{tenant}/{backup}", bucket.name),
            ),
        }
    }

    /// Keeps the bundle written at `written` at `location`: on S3, uploaded
    /// and its staged copy removed.
    pub async fn keep(&self, written: &Path, location: &str) -> Result<(), String> {
        let Self::S3(bucket) = self else { return Ok(()) };
        bucket.made().await?;
        let prefix = bucket.prefix(location)?;
        let mut files: Vec<String> = std::fs::read_dir(written)
            .map_err(|e| format!("{}: {e}", written.display()))?
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect();
        // The manifest last: without it, an upload cut short never verifies.
        files.sort_by_key(|file| (file == export::MANIFEST, file.clone()));
        for file in files {
            let body = ByteStream::from_path(written.join(&file)).await.map_err(|e| format!("{file}: {e}"))?;
            let key = format!("{prefix}/{file}");
            bucket.s3.put_object().bucket(&bucket.name).key(&key).body(body).send().await.map_err(s3_failed(&key))?;
        }
        let _ = tokio::fs::remove_dir_all(written).await;
        Ok(())
    }

    /// The bundle at `location` as files to read.
    pub async fn fetch(&self, location: &str) -> Result<Fetched, String> {
        let Self::S3(bucket) = self else { return Ok(Fetched { path: PathBuf::from(location), copy: false }) };
        let prefix = bucket.prefix(location)?;
        let fetched = Fetched { path: bucket.staging.join(format!("fetched-{}", Uuid::new_v4().simple())), copy: true };
        tokio::fs::create_dir_all(&fetched.path).await.map_err(|e| format!("{}: {e}", fetched.path.display()))?;
        for key in bucket.keys(prefix).await? {
            let file = key.rsplit('/').next().unwrap_or_default();
            let object = bucket.s3.get_object().bucket(&bucket.name).key(&key).send().await.map_err(s3_failed(&key))?;
            let bytes = object.body.collect().await.map_err(|e| format!("{key}: {e}"))?.into_bytes();
            tokio::fs::write(fetched.path.join(file), bytes).await.map_err(|e| format!("{file}: {e}"))?;
        }
        Ok(fetched)
    }

    /// Removes the bundle at `location`, and whatever half of one a crash left.
    pub async fn remove(&self, location: &str) {
        let staged = match self {
            Self::Directory(_) => PathBuf::from(location),
            Self::S3(bucket) => {
                if let Err(error) = bucket.remove(location).await {
                    tracing::warn!(location, %error, "cannot remove a tenant backup");
                }
                match bucket.prefix(location) {
                    Ok(prefix) => bucket.staging.join(prefix),
                    Err(_) => return,
                }
            }
        };
        for dir in [staged.clone(), staged.with_extension("partial")] {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => tracing::warn!(path = %dir.display(), %error, "cannot remove a tenant backup"),
            }
        }
    }
}

impl Bucket {
    /// `<tenant>/<backup>` of an `s3://<bucket>/<tenant>/<backup>` location in this bucket.
    fn prefix<'a>(&self, location: &'a str) -> Result<&'a str, String> {
        location
            .strip_prefix(S3_SCHEME)
            .and_then(|rest| rest.strip_prefix(self.name.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| format!("{location} is not in the backup bucket {}", self.name))
    }

    async fn made(&self) -> Result<(), String> {
        self.made
            .get_or_try_init(|| async {
                if self.s3.head_bucket().bucket(&self.name).send().await.is_ok() {
                    return Ok(());
                }
                let created = self.s3.create_bucket().bucket(&self.name).send().await;
                match created {
                    Ok(_) => Ok(()),
                    // Another daemon made it meanwhile.
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(()),
                    Err(e) => Err(s3_failed(&self.name)(e)),
                }
            })
            .await
            .copied()
    }

    /// Every key under `<prefix>/`.
    async fn keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys = Vec::new();
        let mut pages =
            self.s3.list_objects_v2().bucket(&self.name).prefix(format!("{prefix}/")).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(s3_failed(prefix))?;
            keys.extend(page.contents().iter().filter_map(|object| object.key().map(str::to_owned)));
        }
        Ok(keys)
    }

    async fn remove(&self, location: &str) -> Result<(), String> {
        for key in self.keys(self.prefix(location)?).await? {
            self.s3.delete_object().bucket(&self.name).key(&key).send().await.map_err(s3_failed(&key))?;
        }
        Ok(())
    }
}

fn s3_failed<E: std::error::Error + 'static>(what: &str) -> impl FnOnce(aws_sdk_s3::error::SdkError<E>) -> String + '_ {
    move |e| format!("S3 {what}: {}", aws_sdk_s3::error::DisplayErrorContext(e))
}
