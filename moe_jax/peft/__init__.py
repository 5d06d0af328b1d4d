"""PEFT methods and the adapter-site contract they plug into."""
