//! Entry points for the fuzz targets in `fuzz/`: thin wrappers around
//! parsers that are private to their modules. Hidden from the docs and not
//! an API: they change with the targets.

use std::time::Duration;

use url::Url;

use crate::digest::Digest;
use crate::fetch::{Caller, Want};
use crate::proto;
use crate::server::RequestError;
use crate::source::{FileRoot, GcsSource, SourceError};

/// What h2 reads of a client that sends `chunks` in successive reads: the
/// `:authority` rewriter in front of every connection, without a socket.
pub fn rewrite_authority<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    crate::server::authority::rewrite(chunks)
}

/// A `Fetch` request (or one asset of a `Prewarm`) from `caller`, parsed as
/// the server parses it.
pub fn fetch_request(req: proto::FetchRequest, caller: Caller) -> Result<Want, RequestError> {
    crate::server::request::want(req, caller, &Default::default())
}

/// `List`'s `page_token`, as the server parses it.
pub fn page_token(token: &str) -> Result<Option<Digest>, RequestError> {
    crate::server::request::page_token(token)
}

/// `List`'s `url_prefix`, as the server parses it.
pub fn url_prefix(prefix: String) -> Result<Option<String>, RequestError> {
    crate::server::request::url_prefix(prefix)
}

/// A lease name, as the server parses it.
pub fn lease(name: String) -> Result<String, RequestError> {
    crate::server::request::lease(name)
}

/// The total size in a `Content-Range` value that starts at `offset`, as
/// the HTTP source parses it.
pub fn content_range(value: &str, offset: u64) -> Option<Option<u64>> {
    crate::source::http::parse_content_range(value, offset)
}

/// FIRST and LAST of a `Content-Range` value, as ranged reads check it.
pub fn content_range_exact(value: &str) -> Option<(u64, u64)> {
    crate::source::http::parse_content_range_exact(value)
}

/// A `Retry-After` value, as the HTTP source parses it.
pub fn retry_after(value: &str) -> Option<Duration> {
    crate::source::http::parse_retry_after(value)
}

/// What a `gs://` URL names, as the GCS source parses it.
#[derive(Debug)]
pub struct GcsObject {
    /// The bucket.
    pub bucket: String,
    /// The object name, percent-decoded.
    pub name: String,
    /// The generation, when the URL pins one.
    pub generation: Option<u64>,
    /// The JSON API URL `source` reads the object's metadata from.
    pub metadata_url: Url,
}

/// The object `url` names and where `source` reads it.
pub fn gcs_object(source: &GcsSource, url: &Url) -> Result<GcsObject, SourceError> {
    let object = crate::source::gcs::ObjectRef::parse(url)?;
    let metadata_url = source.media_url(&object, object.generation, &[]);
    Ok(GcsObject {
        bucket: object.bucket,
        name: object.name,
        generation: object.generation,
        metadata_url,
    })
}

/// A `file://` URL's path components, as the file source parses them.
pub fn file_components(url: &Url) -> Result<Vec<String>, SourceError> {
    crate::source::file::components(url)
}

/// The most specific of `roots` holding `parts` (by index), and how many of
/// `parts` name that root.
pub fn file_root_of(roots: &[FileRoot], parts: &[String]) -> Option<(usize, usize)> {
    let (root, depth) = crate::source::file::root_of(roots, parts)?;
    let index = roots.iter().position(|r| std::ptr::eq(r, root))?;
    Some((index, depth))
}
