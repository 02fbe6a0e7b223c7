"""ACE-Step 1.5 through diffusers: family, tiny checkpoint, preprocessing, objective, adapters, generation."""
