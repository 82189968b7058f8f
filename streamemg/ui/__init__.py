"""What a person sees: the live dashboard and the read-only pipeline snapshot it renders."""
