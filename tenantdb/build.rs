// `sqlx::migrate!` embeds the migrations at compile time but cannot tell cargo
// to watch them: a new or edited migration must rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations/tenant");
}
