include $(sort $(wildcard $(BR2_EXTERNAL_AURAE_PATH)/package/*/*.mk))
include $(BR2_EXTERNAL_AURAE_PATH)/board/aurae/linux.mk
