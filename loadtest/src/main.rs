fn main() {
    eprintln!("ringcast-loadtest: not implemented yet");
    std::process::exit(2);
}
