"""Analysis tools: ``visionssm erf`` draws effective receptive fields (:mod:`visionssm.analysis.erf`)."""
