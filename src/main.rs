fn main() {
    std::process::exit(infralab::cli::run());
}
