//! The documents' references hold, offline: every relative link in a `*.md` file reaches a
//! file of the repository (and, with `#anchor`, a heading of that file, slugged as GitHub
//! slugs it); every citation of a section in prose or comments (`README, "Capture on an
//! alert"`, `docs/sealing.md, "The manifest"`, in any .md, .rs, .toml, .yaml or .sh file) names a
//! heading of that document (its start, a numbered step's number aside); and every test the
//! documents cite by name (`it::SUITE`, `it::SUITE::test`, `` `SUITE::test` ``, or a bare
//! long test name in backticks) exists. Moving a section between the README and docs/ then
//! fails here, naming the stale reference, instead of leaving it to a reader.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use regex::Regex;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Directories never walked: build output, VCS data, fuzzing's own output, hidden ones.
const SKIP_DIRS: &[&str] = &["target", "artifacts", "node_modules"];
const EXTENSIONS: &[&str] = &["md", "rs", "toml", "yaml", "yml", "sh"];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            if !name.starts_with('.') && !SKIP_DIRS.contains(&name.as_str()) {
                walk(&path, out);
            }
        } else if kind.is_file()
            && path
                .extension()
                .is_some_and(|x| EXTENSIONS.iter().any(|e| x == *e))
        {
            out.push(path);
        }
    }
}

/// `a/b/../c` as `a/c`, without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// The headings of a Markdown text (outside fenced blocks), as plain text: links reduced to
/// their text, backticks and emphasis removed.
fn headings(md: &str) -> Vec<String> {
    let heading = Regex::new(r"^#{1,6} +(.*?)[ #]*$").unwrap();
    let link = Regex::new(r"\[([^\]]*)\]\([^)]*\)").unwrap();
    let mut fence = false;
    let mut out = Vec::new();
    for line in md.lines() {
        if line.starts_with("```") {
            fence = !fence;
            continue;
        }
        if fence {
            continue;
        }
        if let Some(c) = heading.captures(line) {
            let text = link.replace_all(&c[1], "$1");
            out.push(text.replace(['`', '*'], ""));
        }
    }
    out
}

/// GitHub's anchors for those headings: lower case, only letters, digits, `-`, `_` and
/// spaces kept, spaces as `-`; a repeated one gets `-1`, `-2`, ...
fn anchors(md: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for h in headings(md) {
        let slug: String = h
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// Whether a document has a heading that starts with `title` (a numbered step's `7. `
/// aside), as prose cites sections by their name.
fn has_section(md: &str, title: &str) -> bool {
    let title = title.replace('`', "");
    let number = Regex::new(r"^[0-9]+\. ").unwrap();
    headings(md)
        .iter()
        .any(|h| h.starts_with(&title) || number.replace(h, "").starts_with(&title))
}

struct Repo {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl Repo {
    fn at(root: &Path) -> Repo {
        let mut files = Vec::new();
        walk(root, &mut files);
        files.sort();
        Repo {
            root: root.to_path_buf(),
            files,
        }
    }

    fn rel<'a>(&self, p: &'a Path) -> &'a Path {
        p.strip_prefix(&self.root).unwrap_or(p)
    }

    /// Every broken reference, one line each.
    fn problems(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
        // `FILE, "Section"`, `FILE "Section"`, `FILE ("Section")`; a comment's line break
        // inside the quotes is joined first.
        let cite = Regex::new(
            r#"\b(README(?:\.md)?|[A-Za-z0-9_./-]+\.md)(?:,[ \t]*|[ \t]+)\(?"([^"]{3,100})""#,
        )
        .unwrap();
        let wrap = Regex::new(r"\n[ \t]*(?://[/!]?|#)?[ \t]*").unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        for file in &self.files {
            let text = read(file);
            let dir = file.parent().unwrap_or(&self.root);
            let name = self.rel(file).display().to_string();
            if file.extension().is_some_and(|x| x == "md") {
                let mut fence = false;
                for (i, line) in text.lines().enumerate() {
                    if line.starts_with("```") {
                        fence = !fence;
                    }
                    if fence {
                        continue;
                    }
                    for c in link.captures_iter(line) {
                        let target = &c[1];
                        if target.contains(':') && !target.starts_with('#') {
                            continue; // https:, mailto:
                        }
                        let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                        let to = if path.is_empty() {
                            file.clone()
                        } else {
                            normalize(&dir.join(path))
                        };
                        if !to.exists() {
                            bad.push(format!("{name}:{}: link to a missing {target}", i + 1));
                        } else if !anchor.is_empty()
                            && to.extension().is_some_and(|x| x == "md")
                            && !anchors(&read(&to)).contains(anchor)
                        {
                            bad.push(format!(
                                "{name}:{}: {target}: no heading with anchor #{anchor} in {}",
                                i + 1,
                                self.rel(&to).display()
                            ));
                        }
                    }
                }
            }
            let joined = wrap.replace_all(&text, " ");
            for c in cite.captures_iter(&joined) {
                let doc = &c[1];
                let title = c[2].split_whitespace().collect::<Vec<_>>().join(" ");
                let candidates = if doc.starts_with("README") {
                    vec![self.root.join("README.md")]
                } else {
                    vec![normalize(&dir.join(doc)), self.root.join(doc)]
                };
                match candidates.iter().find(|p| p.is_file()) {
                    None => bad.push(format!("{name}: cites a missing {doc}")),
                    Some(p) if !has_section(&read(p), &title) => bad.push(format!(
                        "{name}: cites {doc}, \"{title}\": {} has no such heading",
                        self.rel(p).display()
                    )),
                    Some(_) => {}
                }
            }
        }
        bad.extend(self.test_citations());
        bad
    }

    /// The tests the Markdown documents cite by name exist.
    fn test_citations(&self) -> Vec<String> {
        let it = self.root.join("tests/it");
        let fn_name = Regex::new(r"\bfn\s+([a-z0-9_]+)").unwrap();
        let mut suites: HashMap<String, BTreeSet<String>> = HashMap::new();
        let mut all: BTreeSet<String> = BTreeSet::new();
        for f in &self.files {
            if f.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let names: BTreeSet<String> = fn_name
                .captures_iter(&fs::read_to_string(f).unwrap_or_default())
                .map(|c| c[1].to_owned())
                .collect();
            if f.parent() == Some(it.as_path()) {
                let suite = f.file_stem().unwrap().to_string_lossy().into_owned();
                suites.insert(suite, names.clone());
            }
            all.extend(names);
        }
        // A name followed by `{` or `*` (`..._on_{moto,seaweedfs}`) names every test it
        // starts.
        let exists = |names: &BTreeSet<String>, n: &str, prefix: bool| {
            names.iter().any(|f| f == n || (prefix && f.starts_with(n)))
        };
        let qualified = Regex::new(r"\bit::([a-z0-9_]+)(?:::([a-z0-9_]+)([{*])?)?").unwrap();
        let suite_test = Regex::new(r"`([a-z0-9_]+)::([a-z0-9_]+)([{*])?").unwrap();
        let bare = Regex::new(r"`([a-z0-9_]{30,})([{*])?").unwrap();
        let mut bad = Vec::new();
        for f in self
            .files
            .iter()
            .filter(|f| f.extension().is_some_and(|x| x == "md"))
        {
            let name = self.rel(f).display().to_string();
            let text = fs::read_to_string(f).unwrap_or_default();
            for c in qualified.captures_iter(&text) {
                match (suites.get(&c[1]), c.get(2)) {
                    (None, _) => bad.push(format!("{name}: cites a missing suite it::{}", &c[1])),
                    (Some(tests), Some(t)) if !exists(tests, t.as_str(), c.get(3).is_some()) => {
                        bad.push(format!("{name}: cites a missing test {}", &c[0]))
                    }
                    _ => {}
                }
            }
            for c in suite_test.captures_iter(&text) {
                if let Some(tests) = suites.get(&c[1])
                    && !exists(tests, &c[2], c.get(3).is_some())
                {
                    bad.push(format!("{name}: cites a missing test {}::{}", &c[1], &c[2]));
                }
            }
            for c in bare.captures_iter(&text) {
                let n = &c[1];
                // Long snake_case names in backticks are test names, but for metrics.
                if n.matches('_').count() >= 5
                    && !n.starts_with("ckvault_")
                    && !exists(&all, n, c.get(2).is_some())
                {
                    bad.push(format!("{name}: cites a missing test `{n}`"));
                }
            }
        }
        bad
    }
}

#[test]
fn links_anchors_and_cited_sections_and_tests_exist() {
    let bad = Repo::at(Path::new(REPO)).problems();
    assert!(
        bad.is_empty(),
        "{} stale references in the documents:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The check can fail: a small repository with one of each kind of stale reference.
#[test]
fn the_reference_check_finds_each_kind_of_stale_reference() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("docs")).unwrap();
    fs::create_dir_all(root.join("tests/it")).unwrap();
    fs::write(
        root.join("README.md"),
        "# x\n\n## Getting a record out\n\n```sh\n# not a heading\n```\n\
         [ok](docs/a.md#the-s3-store-many-nodes-one-bucket) [ok](#getting-a-record-out)\n\
         [gone](docs/none.md) [bad anchor](docs/a.md#serving) [no](#not-a-heading)\n",
    )
    .unwrap();
    fs::write(
        root.join("docs/a.md"),
        "# A\n\n## The S3 store (many nodes, one bucket)\n\n## 7. A first download\n\n\
         See README, \"Getting a record out\" and [up](../README.md#getting-a-record-out);\n\
         a.md, \"A first download\"; README, \"The S3\nstore\" is gone.\n\
         `it::suite::a_test`, `it::suite::gone_test`, `it::nosuite`,\n\
         `suite::a_test`, `suite::b_`, `a_test_whose_name_is_long_and_true`,\n\
         `a_test_whose_name_is_long_and_false`, `suite::a_test_{x,y}`\n",
    )
    .unwrap();
    fs::write(
        root.join("tests/it/suite.rs"),
        "// docs/a.md, \"The S3 store\" holds; docs/a.md, \"Serving\" does not.\n\
         fn a_test() {}\nfn a_test_whose_name_is_long_and_true() {}\n",
    )
    .unwrap();
    let mut bad = Repo::at(root).problems();
    bad.sort();
    let expected = [
        "README.md:9: #not-a-heading: no heading with anchor #not-a-heading in README.md",
        "README.md:9: docs/a.md#serving: no heading with anchor #serving in docs/a.md",
        "README.md:9: link to a missing docs/none.md",
        "docs/a.md: cites README, \"The S3 store\": README.md has no such heading",
        "docs/a.md: cites a missing suite it::nosuite",
        "docs/a.md: cites a missing test `a_test_whose_name_is_long_and_false`",
        "docs/a.md: cites a missing test it::suite::gone_test",
        "docs/a.md: cites a missing test suite::b_",
        "tests/it/suite.rs: cites docs/a.md, \"Serving\": docs/a.md has no such heading",
    ];
    assert_eq!(bad, expected);
}
