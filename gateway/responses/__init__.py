"""POST /v1/responses: the OpenAI Responses API, routed like chat; stored-response calls pass through."""
