//! Fills a local store with N records for the listing benchmark (scripts/bench.sh):
//! `cargo run --release --example gen_records -- STORE N TEMPLATE_ID`. Every record is a
//! copy of record TEMPLATE_ID (sealed for real beforehand) under a fresh ID with a fresh
//! signature, spread over 50 namespaces, so listing and filtering have real work to do.
//! Files are written straight into records/ without fsync (a benchmark fixture, not a way
//! to store evidence); use a small template so N copies fit on disk.

use ckvault::internal::store::LocalStore;
use ckvault::manifest::RecordId;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(n), Some(template)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err("usage: gen_records STORE N TEMPLATE_ID".into());
    };
    let n: usize = n.parse()?;
    let store = LocalStore::open(std::path::Path::new(dir))?;
    let template_id: RecordId = template.parse()?;
    let template = store.manifest(&template_id)?;
    let blob = std::fs::read(store.blob_path(&template_id))?;
    let key = store.signing_key()?;
    for i in 0..n {
        let id = RecordId::generate();
        let mut m = template.clone();
        m.id = id.clone();
        m.namespace = Some(format!("team-{}", i % 50));
        m.pod = Some(format!("pod-{i}"));
        m.signature = None;
        let blob_path = store.blob_path(&id);
        m.sealed.blob = blob_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::fs::write(&blob_path, &blob)?;
        key.sign(&mut m)?;
        std::fs::write(store.manifest_path(&id), m.to_json_pretty()?)?;
    }
    println!("{n} records in {dir}");
    Ok(())
}
