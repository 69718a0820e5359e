//! `file://` URLs as the file source parses them: path components, each
//! percent-decoded, none of which can walk elsewhere (`/`, NUL, `.`, `..`),
//! so joined under `/` they are exactly the path's components; and the root
//! chosen for them is the deepest root they lie strictly inside.
#![no_main]

use std::path::{Component, PathBuf};
use std::sync::OnceLock;

use assetd::source::FileRoot;
use libfuzzer_sys::fuzz_target;
use url::Url;

fn roots() -> &'static [FileRoot] {
    static ROOTS: OnceLock<Vec<FileRoot>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        [
            "/srv/files",
            "/srv/files/pub",
            "/srv/filesx",
            "/var/lib/images",
        ]
        .into_iter()
        .map(|p| FileRoot {
            path: PathBuf::from(p),
            public: false,
        })
        .collect()
    })
}

fn names(root: &FileRoot) -> Vec<String> {
    root.path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_str().unwrap().to_owned()),
            _ => None,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(url) = Url::parse(&format!("file://{text}")) else {
        return;
    };
    let parts = match assetd::fuzzing::file_components(&url) {
        Ok(parts) => parts,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for part in &parts {
        assert!(
            !part.is_empty() && !part.contains(['/', '\0']),
            "{part:?} of {url}"
        );
        assert!(part != "." && part != "..", "{part:?} of {url}");
    }
    let path: PathBuf = std::iter::once("/")
        .chain(parts.iter().map(String::as_str))
        .collect();
    let components: Vec<Component> = path.components().collect();
    assert_eq!(
        components.len(),
        parts.len() + 1,
        "{url} -> {}",
        path.display()
    );
    assert_eq!(components[0], Component::RootDir);
    for (c, part) in components[1..].iter().zip(&parts) {
        assert_eq!(c.as_os_str(), part.as_str());
    }
    let inside: Vec<usize> = roots()
        .iter()
        .map(names)
        .filter(|n| n.len() < parts.len() && parts.starts_with(n))
        .map(|n| n.len())
        .collect();
    match assetd::fuzzing::file_root_of(roots(), &parts) {
        Some((index, depth)) => {
            assert_eq!(names(&roots()[index]), parts[..depth]);
            assert!(depth < parts.len());
            assert_eq!(Some(&depth), inside.iter().max());
        }
        None => assert!(inside.is_empty(), "{url}"),
    }
});
