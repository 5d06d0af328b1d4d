"""Small leaves every layer may use: the path layer (local and gs://), where data
and the repository are, input validation, and quieting TensorFlow's start-up."""
