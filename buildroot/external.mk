# The packages of this tree (only lifeboat itself for now).
include $(sort $(wildcard $(BR2_EXTERNAL_LIFEBOAT_PATH)/package/*/*.mk))
