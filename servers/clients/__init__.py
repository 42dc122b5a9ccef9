"""Clients of inference servers (TGI, OpenAI-compatible: vLLM, SGLang) and of LangChain LLMs, as backends."""
