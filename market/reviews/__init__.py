"""Payment reviews: a provider's payment held while the operator judges failed claims."""
