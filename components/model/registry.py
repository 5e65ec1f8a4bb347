"""Importing this registers the ALiBi decoder (model_type alibi_llama) with transformers' Auto classes,
so every stage loads an alibi artifact by its config.json without trust_remote_code (which would run
whatever code a checkpoint ships). Imported by build, export (the training loop) and adapters (loading)."""
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from components.model.alibi import AlibiLlamaConfig, AlibiLlamaForCausalLM, AlibiLlamaForSequenceClassification

AutoConfig.register(AlibiLlamaConfig.model_type, AlibiLlamaConfig, exist_ok=True)
AutoModelForCausalLM.register(AlibiLlamaConfig, AlibiLlamaForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(AlibiLlamaConfig, AlibiLlamaForSequenceClassification, exist_ok=True)
