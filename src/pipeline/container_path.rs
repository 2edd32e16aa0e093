//! What a container log's path says about where its lines come from, judged by the path's
//! shape wherever the log directory is mounted (the kubelet's layout, Docker's), and what
//! kind of records a `files` glob of that shape reads. Pure string work: no I/O.

use crate::pipeline::decode::Format;

/// Where a file's path says its lines come from, judged by its shape wherever the log
/// directory is mounted: the kubelet's layout (`…/pods/NAMESPACE_POD_UID/CONTAINER/N.log`,
/// and the `…/containers/POD_NAMESPACE_CONTAINER-ID.log` links) or Docker's
/// (`…/containers/ID/ID-json.log`, the container id cut to 12 characters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathMeta<'a> {
    pub namespace: Option<&'a str>,
    pub pod: Option<&'a str>,
    pub container: Option<&'a str>,
}

pub fn path_meta(path: &str) -> PathMeta<'_> {
    // The last four components, from the end: [file, dir1, dir2, dir3] (fewer for a short
    // path); no allocation, as this runs for each rendered placeholder.
    let mut parts = [""; 4];
    let mut n = 0;
    for (slot, part) in parts.iter_mut().zip(path.rsplit('/')) {
        *slot = part;
        n += 1;
    }
    let parts = &parts[..n];
    if let [file, container, pod_dir, pods, ..] = parts
        && *pods == "pods"
        && file.contains(".log")
    {
        // NAMESPACE_POD_UID: namespaces and pods cannot hold `_`; the UID is the last part.
        let mut ids = pod_dir.splitn(3, '_');
        if let (Some(namespace), Some(pod), Some(_uid)) = (ids.next(), ids.next(), ids.next()) {
            return PathMeta {
                namespace: Some(namespace),
                pod: Some(pod),
                container: Some(container),
            };
        }
    }
    if let [file, id_dir, containers, ..] = parts
        && *containers == "containers"
        && file.starts_with(*id_dir)
        && file.ends_with("-json.log")
        && id_dir.len() >= 12
        && id_dir.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return PathMeta {
            namespace: None,
            pod: None,
            container: id_dir.get(..12),
        };
    }
    if let [file, containers, ..] = parts
        && *containers == "containers"
        && let Some(name) = file.strip_suffix(".log")
    {
        // POD_NAMESPACE_CONTAINER-ID, the id being 64 hex digits.
        let mut ids = name.splitn(3, '_');
        if let (Some(pod), Some(namespace), Some(rest)) = (ids.next(), ids.next(), ids.next())
            && let Some((container, id)) = rest.rsplit_once('-')
            && id.len() == 64
        {
            return PathMeta {
                namespace: Some(namespace),
                pod: Some(pod),
                container: Some(container),
            };
        }
    }
    PathMeta::default()
}

/// What a `files` glob reads, judged by its shape: the kubelet's container logs (`pods`
/// or `containers` directories: CRI records) or Docker's (`…/containers/*/*-json.log`).
pub fn container_log_glob(pattern: &str) -> Option<Format> {
    if pattern.contains("/containers/") && pattern.ends_with("-json.log") {
        Some(Format::Docker)
    } else if pattern.contains("/pods/") || pattern.contains("/log/containers/") {
        Some(Format::Cri)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_say_namespace_pod_and_container() {
        assert_eq!(
            path_meta("/var/log/pods/shop_checkout-7d9f_0b5c3e2a-1111/api/0.log"),
            PathMeta {
                namespace: Some("shop"),
                pod: Some("checkout-7d9f"),
                container: Some("api")
            }
        );
        let id = "a".repeat(64);
        assert_eq!(
            path_meta(&format!(
                "/var/log/containers/checkout-7d9f_shop_api-{id}.log"
            )),
            PathMeta {
                namespace: Some("shop"),
                pod: Some("checkout-7d9f"),
                container: Some("api")
            }
        );
        assert_eq!(
            path_meta(&format!("/var/lib/docker/containers/{id}/{id}-json.log")).container,
            Some("aaaaaaaaaaaa")
        );
        assert_eq!(
            path_meta(&format!("/srv/docker-data/containers/{id}/{id}-json.log")).container,
            Some("aaaaaaaaaaaa")
        );
        assert_eq!(path_meta("/var/log/app.log"), PathMeta::default());
    }
}
