"""The change detector (To et al., section 3.2): network, loss, training, prediction."""
