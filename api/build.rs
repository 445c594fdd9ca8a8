//! Embeds the web pages (`web/`) in the binary: every asset but the entry
//! points gets its content hash in its name (`/assets/app.3f9c0a1b2d.js`,
//! cached for a year), `{{asset:PATH}}` in the entry points becomes that
//! name and `{{precache}}` the list of assets the public page needs
//! offline; text assets are gzipped here once. The table the server reads
//! is `$OUT_DIR/web_assets.rs`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Entry points: served at fixed paths, never cached for long.
const ENTRIES: &[(&str, &str)] = &[
    ("public/index.html", "/"),
    ("console/index.html", "/console"),
    ("public/sw.js", "/sw.js"),
    ("public/manifest.webmanifest", "/manifest.webmanifest"),
];

/// What is kept out of the binary (sources and licences stay in the repo).
fn skipped(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with("LICENSE") || name.ends_with(".py") || name.ends_with(".md")
}

fn mime(rel: &str) -> &'static str {
    match rel.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "geojson" => "application/geo+json",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        other => panic!("web/{rel}: no media type for .{other}"),
    }
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, root, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("under web/")
                .to_string_lossy()
                .replace('\\', "/");
            if !skipped(&rel) {
                out.push(rel);
            }
        }
    }
}

/// Vendor bundles end with a source-map comment; the maps are not shipped.
fn strip_source_map(rel: &str, bytes: Vec<u8>) -> Vec<u8> {
    if !(rel.ends_with(".js") || rel.ends_with(".css")) {
        return bytes;
    }
    let text = String::from_utf8(bytes).unwrap_or_else(|_| panic!("web/{rel}: not UTF-8"));
    text.lines()
        .filter(|l| {
            !l.starts_with("//# sourceMappingURL=") && !l.starts_with("/*# sourceMappingURL=")
        })
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("gzip in memory");
    enc.finish().expect("gzip in memory")
}

fn hash(bytes: &[u8]) -> u64 {
    // SipHash with fixed keys: the same bytes give the same name.
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// `{{asset:PATH}}` → its URL; `{{precache}}` → the public page's assets.
fn substitute(rel: &str, text: &str, urls: &BTreeMap<String, String>, precache: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let j = rest[i..]
            .find("}}")
            .unwrap_or_else(|| panic!("web/{rel}: unclosed {{{{"));
        let tag = &rest[i + 2..i + j];
        if tag == "precache" {
            out.push_str(precache);
        } else if let Some(path) = tag.strip_prefix("asset:") {
            out.push_str(
                urls.get(path)
                    .unwrap_or_else(|| panic!("web/{rel}: no asset {path}")),
            );
        } else {
            // Not ours (e.g. a template literal): keep it.
            out.push_str(&rest[i..i + j + 2]);
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(rest);
    out
}

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("web");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed=web");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    let is_entry = |rel: &str| ENTRIES.iter().any(|(e, _)| *e == rel);

    // Assets first: their names go into the entry points.
    let mut urls = BTreeMap::new();
    let mut served: Vec<(String, String, Vec<u8>, bool)> = Vec::new();
    for rel in files.iter().filter(|r| !is_entry(r)) {
        let bytes = strip_source_map(rel, std::fs::read(root.join(rel)).expect("readable"));
        let name = rel.rsplit('/').next().expect("a file name");
        let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
        let url = format!("/assets/{stem}.{:010x}.{ext}", hash(&bytes) >> 24);
        urls.insert(rel.clone(), url.clone());
        served.push((rel.clone(), url, bytes, true));
    }
    // Offline, the public page needs what its HTML names.
    let index = std::fs::read_to_string(root.join("public/index.html")).expect("public/index.html");
    let precache: Vec<&str> = urls
        .iter()
        .filter(|(rel, _)| index.contains(&format!("{{{{asset:{rel}}}}}")))
        .map(|(_, url)| url.as_str())
        .chain(["/", "/manifest.webmanifest"])
        .collect();
    let precache = format!(
        "[{}]",
        precache
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (rel, path) in ENTRIES {
        let text =
            std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("web/{rel}: {e}"));
        let text = substitute(rel, &text, &urls, &precache);
        served.push((
            (*rel).to_owned(),
            (*path).to_owned(),
            text.into_bytes(),
            false,
        ));
    }

    let mut table = String::from("pub(crate) static ASSETS: &[Asset] = &[\n");
    for (i, (rel, url, bytes, immutable)) in served.iter().enumerate() {
        let raw = out_dir.join(format!("web-{i}"));
        std::fs::write(&raw, bytes).expect("OUT_DIR is writable");
        let gz = (!rel.ends_with(".png"))
            .then(|| gzip(bytes))
            .filter(|g| g.len() < bytes.len())
            .map(|g| {
                let p = out_dir.join(format!("web-{i}.gz"));
                std::fs::write(&p, g).expect("OUT_DIR is writable");
                format!("Some(include_bytes!({:?}))", p.display().to_string())
            })
            .unwrap_or_else(|| "None".to_owned());
        table.push_str(&format!(
            "    Asset {{ path: {url:?}, mime: {:?}, immutable: {immutable}, etag: \"\\\"{:016x}\\\"\", body: include_bytes!({:?}), gzip: {gz} }},\n",
            mime(rel),
            hash(bytes),
            raw.display().to_string(),
        ));
    }
    table.push_str("];\n");
    std::fs::write(out_dir.join("web_assets.rs"), table).expect("OUT_DIR is writable");
}
