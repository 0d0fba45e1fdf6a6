"""forgetless gateway: an OpenAI-compatible endpoint that routes each request to the right LoRA adapter."""
