use crate::{cli::PinArgs, kernel::pinned, netfilter};

pub fn unload(args: &PinArgs) -> anyhow::Result<()> {
    let mut removed = pinned::unload(&args.pin_dir)?;
    // The table of this network namespace, and nothing else: no other table is touched.
    if netfilter::remove()? {
        removed.push(format!("nftables table inet {} (forward and output rules)", netfilter::TABLE));
    }
    if removed.is_empty() {
        println!(
            "nothing pinned in {} and no nftables table {}: nothing to unload",
            args.pin_dir.display(),
            netfilter::TABLE
        );
    } else {
        println!("imds-guard no longer enforces; removed:");
        for r in removed {
            println!("  {r}");
        }
    }
    Ok(())
}
