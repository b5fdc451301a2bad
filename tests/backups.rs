//! Workspace backups on the local store: archives restorable with `tar`,
//! signed downloads, pins and cleanup, quota, restore and hostile archives.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Options, Server};
use serde_json::{Value, json};

fn workspace(server: &Server, id: &str) -> PathBuf {
    server.data_dir.path().join("agents").join(id).join("workspace")
}

fn object_path(server: &Server, backup_id: &str) -> PathBuf {
    server.data_dir.path().join(format!("blobs/plugins/storage-tar/backups/{backup_id}.tar.gz"))
}

async fn deploy(server: &Server, token: &str) -> String {
    let agent = server.deploy(token, "testkit", None).await;
    assert_eq!(agent["status"], "ONLINE", "{agent}");
    agent["id"].as_str().unwrap().to_string()
}

async fn backup(server: &Server, token: &str, id: &str) -> Value {
    let (status, backup) = server.post_empty(token, &format!("/api/agents/{id}/workspace/backup")).await;
    assert_eq!(status, 201, "{backup}");
    backup
}

/// Bytes that gzip cannot shrink, so archive sizes are predictable.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

fn fill_workspace(root: &Path) {
    std::fs::create_dir_all(root.join("state/nested")).unwrap();
    std::fs::write(root.join("state/nested/data.bin"), noise(200_000, 1)).unwrap();
    std::fs::write(root.join("notes.txt"), "hello\n").unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::os::unix::fs::symlink("state/nested/data.bin", root.join("link")).unwrap();
}

/// Differences between two directory trees, by relative path.
fn tree_diff(left: &Path, right: &Path) -> Vec<String> {
    let output = Command::new("diff").arg("-r").arg("--no-dereference").arg(left).arg(right).output().unwrap();
    String::from_utf8_lossy(&output.stdout).lines().map(String::from).collect()
}

#[tokio::test]
async fn backup_downloads_and_extracts_with_tar() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let root = workspace(&server, &id);
    fill_workspace(&root);

    let created = backup(&server, &token, &id).await;
    let backup_id = created["id"].as_str().unwrap();
    assert!(backup_id.starts_with("bkp_"), "{created}");
    assert!(created["size"].as_u64().unwrap() > 200_000, "{created}");
    assert_eq!(created["pinned"], false);
    assert!(created["createdAt"].is_string());

    let (_, list) = server.get(&token, &format!("/api/agents/{id}/workspace/backups")).await;
    assert_eq!(list["backups"][0]["id"], backup_id, "{list}");

    let (status, link) = server.get(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/download")).await;
    assert_eq!(status, 200, "{link}");
    let url = link["url"].as_str().unwrap();
    let response = server.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let archive = response.bytes().await.unwrap();
    assert_eq!(archive.len() as u64, created["size"].as_u64().unwrap());

    let scratch = tempfile::tempdir().unwrap();
    let archive_path = scratch.path().join("backup.tar.gz");
    std::fs::write(&archive_path, &archive).unwrap();
    let extracted = scratch.path().join("out");
    std::fs::create_dir(&extracted).unwrap();
    let status = Command::new("tar").arg("-xzf").arg(&archive_path).arg("-C").arg(&extracted).status().unwrap();
    assert!(status.success(), "tar -xzf failed");
    assert_eq!(tree_diff(&root, &extracted), Vec::<String>::new(), "extracted tree differs");
    assert_eq!(std::fs::read_link(extracted.join("link")).unwrap(), Path::new("state/nested/data.bin"));
}

#[tokio::test]
async fn tampered_or_expired_links_get_403() {
    let options = Options { extra_config: "[backups]\ndownload_ttl_secs = 1\n".into(), ..Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let backup_id = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    let (_, link) = server.get(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/download")).await;
    let url = link["url"].as_str().unwrap().to_string();

    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let response = server.http.get(&tampered).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let other_backup = url.replace(&backup_id, "bkp_aaaaaaaaaaaa");
    assert_eq!(server.http.get(&other_backup).send().await.unwrap().status(), 403);

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let response = server.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403, "the link outlived its 1 s lifetime");

    let token_part = url.rsplit('/').next().unwrap();
    assert!(server.log().contains("/api/backup-downloads/<token>"), "requests are logged");
    assert!(!server.log().contains(token_part), "the server log contains a download token");
}

#[tokio::test]
async fn cleanup_keeps_pinned_and_newest_backups() {
    let options = Options { extra_config: "[backups]\nkeep_unpinned = 2\n".into(), ..Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;

    let first = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    let response = server
        .http
        .patch(format!("{}/api/agents/{id}/workspace/backups/{first}/pin", server.url))
        .bearer_auth(&token)
        .json(&json!({"pinned": true}))
        .send()
        .await
        .unwrap();
    let (status, pinned) = common::split(response).await;
    assert_eq!(status, 200, "{pinned}");
    assert_eq!(pinned["pinned"], true);

    let mut later = Vec::new();
    for _ in 0..3 {
        later.push(backup(&server, &token, &id).await["id"].as_str().unwrap().to_string());
    }
    let (_, list) = server.get(&token, &format!("/api/agents/{id}/workspace/backups")).await;
    let ids: Vec<&str> = list["backups"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&first.as_str()), "the pinned backup was cleaned up: {ids:?}");
    assert!(!ids.contains(&later[0].as_str()), "the oldest unpinned backup survived: {ids:?}");
    assert!(ids.contains(&later[1].as_str()), "{ids:?}");
    assert!(ids.contains(&later[2].as_str()), "{ids:?}");
    assert!(!object_path(&server, &later[0]).exists(), "the cleaned-up archive is still stored");
}

#[tokio::test]
async fn quota_rejects_then_delete_frees_it() {
    let options = Options { extra_config: "[backups]\nquota_bytes = 300000\n".into(), ..Options::default() };
    let server = Server::start_with(options).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    std::fs::write(workspace(&server, &id).join("noise.bin"), noise(200_000, 7)).unwrap();

    let first = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backup")).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "quota_exceeded");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("300000"), "{message}");
    assert!(message.contains(&first), "the message names a backup to delete: {message}");
    let (_, list) = server.get(&token, &format!("/api/agents/{id}/workspace/backups")).await;
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "a rejected backup is listed");

    let (status, _) = server.delete(&token, &format!("/api/agents/{id}/workspace/backups/{first}")).await;
    assert_eq!(status, 204);
    assert!(!object_path(&server, &first).exists());
    backup(&server, &token, &id).await;
}

#[tokio::test]
async fn restore_brings_back_the_workspace_and_the_agent() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let root = workspace(&server, &id);
    std::fs::write(root.join("data.txt"), "version 1").unwrap();
    let backup_id = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();

    std::fs::write(root.join("data.txt"), "version 2").unwrap();
    std::fs::write(root.join("added.txt"), "new").unwrap();
    let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/restore")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"]["status"], "ONLINE", "{body}");
    assert_eq!(std::fs::read_to_string(root.join("data.txt")).unwrap(), "version 1");
    assert!(!root.join("added.txt").exists(), "files added after the backup survived the restore");
    let leftovers: Vec<String> = std::fs::read_dir(root.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("workspace."))
        .collect();
    assert!(leftovers.is_empty(), "staging directories left behind: {leftovers:?}");
}

/// Writes a gzip tar archive with hostile entries, using Python's tarfile.
fn write_hostile_archive(path: &Path, kind: &str, outside: &Path) {
    let script = r#"
import io, sys, tarfile
path, kind, outside = sys.argv[1], sys.argv[2], sys.argv[3]
with tarfile.open(path, "w:gz") as tar:
    def add_file(name, data=b"pwned"):
        info = tarfile.TarInfo(name); info.size = len(data); tar.addfile(info, io.BytesIO(data))
    if kind == "dotdot": add_file("../escaped.txt")
    elif kind == "absolute": add_file(outside + "/absolute.txt")
    elif kind == "symlink":
        link = tarfile.TarInfo("evil"); link.type = tarfile.SYMTYPE; link.linkname = outside; tar.addfile(link)
        add_file("evil/through-link.txt")
    elif kind == "hardlink":
        link = tarfile.TarInfo("hard"); link.type = tarfile.LNKTYPE; link.linkname = outside + "/target"; tar.addfile(link)
    elif kind == "device":
        dev = tarfile.TarInfo("dev"); dev.type = tarfile.CHRTYPE; dev.devmajor = 1; dev.devminor = 3; tar.addfile(dev)
"#;
    let status = Command::new("python3").arg("-c").arg(script).arg(path).arg(kind).arg(outside).status().unwrap();
    assert!(status.success(), "python3 could not write the {kind} archive");
}

#[tokio::test]
async fn hostile_archives_are_rejected_without_writing_outside() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let root = workspace(&server, &id);
    std::fs::write(root.join("keep.txt"), "unchanged").unwrap();
    let backup_id = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("target"), "secret").unwrap();

    for kind in ["dotdot", "absolute", "symlink", "hardlink", "device"] {
        write_hostile_archive(&object_path(&server, &backup_id), kind, outside.path());
        let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/restore")).await;
        assert_eq!(status, 400, "{kind}: {body}");
        assert_eq!(body["code"], "archive_rejected", "{kind}: {body}");

        let escaped: Vec<String> = std::fs::read_dir(outside.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(escaped, ["target"], "{kind}: something was written outside the workspace");
        assert!(!root.parent().unwrap().join("escaped.txt").exists(), "{kind}: escaped the workspace");
        assert_eq!(std::fs::read_to_string(root.join("keep.txt")).unwrap(), "unchanged", "{kind}: the workspace changed");
    }
    let agent = server.wait_for_status(&token, &id, "ONLINE", Duration::from_secs(5)).await;
    assert_eq!(agent["status"], "ONLINE", "a rejected restore must leave the agent running: {agent}");
}

#[tokio::test]
async fn paused_backup_resumes_the_agent() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backup?pause=true")).await;
    assert_eq!(status, 201, "{body}");
    let (_, health) = server.get(&token, &format!("/api/agents/{id}/health")).await;
    assert_eq!(health["healthy"], true, "the agent answers again after the paused backup: {health}");
}

#[tokio::test]
async fn backups_enforce_scope_and_ownership() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let read = server.create_token("ops@example.com", "read");
    let deploy_token = server.create_token("ops@example.com", "read,deploy");
    let other = server.user_with_token("other@example.com");
    let id = deploy(&server, &token).await;
    let backup_id = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    let base = format!("/api/agents/{id}/workspace");

    let (status, _) = server.get(&read, &format!("{base}/backups")).await;
    assert_eq!(status, 200);
    let (status, _) = server.post_empty(&read, &format!("{base}/backup")).await;
    assert_eq!(status, 403);
    let (status, _) = server.get(&deploy_token, &format!("{base}/backups/{backup_id}/download")).await;
    assert_eq!(status, 403, "download needs full");
    for path in [format!("{base}/backups"), format!("{base}/backups/{backup_id}/download")] {
        let (status, _) = server.get(&other, &path).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = server.delete(&other, &format!("{base}/backups/{backup_id}")).await;
    assert_eq!(status, 404);
    let (status, _) = server.get(&token, &format!("{base}/backups/bkp_doesnotexist/download")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn restart_removes_unfinished_backups() {
    let mut server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let kept = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    server.kill();

    // A crash mid-backup leaves a pending row and a partial object; an
    // object without any row is an orphan.
    let store = agentstead::store::Store::open_sqlite(&server.data_dir.path().join("agentstead.db")).await.unwrap();
    let user_id = {
        let agents = store.all_agents().await.unwrap();
        agents[0].user_id.clone()
    };
    store.insert_backup("bkp_pending00000", &id, &user_id).await.unwrap();
    drop(store);
    std::fs::write(object_path(&server, "bkp_pending00000"), b"partial").unwrap();
    std::fs::write(object_path(&server, "bkp_orphan000000"), b"orphan").unwrap();

    server.launch().await;
    assert!(!object_path(&server, "bkp_pending00000").exists(), "the partial object survived the restart");
    assert!(!object_path(&server, "bkp_orphan000000").exists(), "the orphaned object survived the restart");
    assert!(object_path(&server, &kept).exists(), "a complete backup was removed");
    let (_, list) = server.get(&token, &format!("/api/agents/{id}/workspace/backups")).await;
    let ids: Vec<&str> = list["backups"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [kept.as_str()]);
}

/// An S3-compatible moto server on loopback, killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_moto() -> Option<Moto> {
    let program = std::env::var_os("AGENTSTEAD_MOTO_SERVER").map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join("moto_server")).find(|path| path.is_file())
    });
    let Some(program) = program else {
        if std::env::var("AGENTSTEAD_REQUIRE_MOTO").as_deref() == Ok("1") {
            panic!("AGENTSTEAD_REQUIRE_MOTO=1 but moto_server is neither in AGENTSTEAD_MOTO_SERVER nor on PATH");
        }
        eprintln!("\n*** SKIPPED S3 backup test: moto_server is not installed (pip install 'moto[server]'). ***\n");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for _ in 0..100 {
        if client.put(format!("{}/agentstead-test", moto.endpoint)).send().await.is_ok_and(|r| r.status().is_success()) {
            return Some(moto);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not create the bucket within 10 s");
}

#[tokio::test]
async fn s3_store_uploads_in_parts_and_signs_downloads() {
    let Some(moto) = start_moto().await else {
        return;
    };
    let extra_config = format!(
        "[backups]\nstore_url = \"s3://agentstead-test/archives\"\n\n[backups.store_options]\n\
         aws_endpoint = \"{}\"\naws_access_key_id = \"testing\"\naws_secret_access_key = \"testing\"\n\
         aws_region = \"us-east-1\"\naws_allow_http = \"true\"\n",
        moto.endpoint
    );
    let server = Server::start_with(Options { extra_config, ..Options::default() }).await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let root = workspace(&server, &id);
    // Incompressible content larger than two 5 MiB parts forces a multipart upload.
    std::fs::write(root.join("large.bin"), noise(12 * 1024 * 1024, 3)).unwrap();
    std::fs::write(root.join("small.txt"), "small\n").unwrap();

    let created = backup(&server, &token, &id).await;
    let backup_id = created["id"].as_str().unwrap().to_string();
    assert!(created["size"].as_u64().unwrap() > 12 * 1024 * 1024, "{created}");
    assert!(!server.data_dir.path().join("blobs").exists(), "the local store was used instead of S3");

    let (_, link) = server.get(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/download")).await;
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&moto.endpoint), "not a presigned S3 URL: {url}");
    assert!(url.contains("X-Amz-Signature"), "not a presigned S3 URL: {url}");
    let archive = reqwest::get(url).await.unwrap();
    assert_eq!(archive.status(), 200);
    let bytes = archive.bytes().await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("b.tar.gz"), &bytes).unwrap();
    let out = scratch.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let status = Command::new("tar").arg("-xzf").arg(scratch.path().join("b.tar.gz")).arg("-C").arg(&out).status().unwrap();
    assert!(status.success());
    assert_eq!(tree_diff(&root, &out), Vec::<String>::new());

    std::fs::remove_file(root.join("small.txt")).unwrap();
    let (status, body) = server.post_empty(&token, &format!("/api/agents/{id}/workspace/backups/{backup_id}/restore")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(std::fs::read_to_string(root.join("small.txt")).unwrap(), "small\n", "restore from S3");
}

#[tokio::test]
async fn deleting_an_agent_deletes_its_archives() {
    let server = Server::start().await;
    let token = server.user_with_token("ops@example.com");
    let id = deploy(&server, &token).await;
    let backup_id = backup(&server, &token, &id).await["id"].as_str().unwrap().to_string();
    assert!(object_path(&server, &backup_id).exists());

    let (status, _) = server.delete(&token, &format!("/api/agents/{id}")).await;
    assert_eq!(status, 204);
    assert!(!object_path(&server, &backup_id).exists(), "the archive outlived its agent");
}
