"""The analyses of `freqtr-hf analyze`: the frequency paper's (`frequency`), "Which Tokens to Use?"'s pattern metrics
(`patterns`), the jobs that run the models and cache their statistics (`jobs`), the report's numbers
(`statistics`), the verdicts on the papers' claims (`findings`), the figures (`figures`) and the run (`report`)."""
