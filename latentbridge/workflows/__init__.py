"""What each command does (train, evaluate, reproduce, MLLM evaluation); command-line parsing is in cli."""
