"""autodistill-jax: search for and distill hardware-efficient BERT-style students (AutoDistill, 003)."""
